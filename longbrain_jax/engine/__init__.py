"""What every per-subject method shares: the training step (`training`), the subject axis
sharded over devices (`sharding`), orbax checkpoints (`checkpoint`), the chunked,
resumable loop that trains one model per subject of a cohort (`chunks`), run folders
(`rundir`) and rows larger than memory (`store`). Memory budgets are `longbrain_jax.memory`."""
