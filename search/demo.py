"""`make demo`: the forecasting job (search.run) on its shipped default config.

    python -m search.demo [--config configs/demo/airpassengers.yaml]
"""

import sys

from search.run import main

if __name__ == "__main__":
    sys.exit(main(default_config="configs/demo/airpassengers.yaml"))
