"""Tree search over the LM's digit actions (MaxEnt-TS and baselines), and harvesting."""
