"""What the benchmarks share: samplers run to a token budget (`draws`), their scores (`scoring`) and a
resumable store of typed rows (`store`). Importable from the repository root (`benchmarks.evaluation`)."""
