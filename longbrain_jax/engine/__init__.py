"""What every per-subject method shares: memory budgets and the sizes planned from them,
the subject axis sharded over devices, orbax checkpoints, and the chunked, resumable
loop that trains one model per subject of a cohort."""
