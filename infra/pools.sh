#!/bin/sh
# The team stack's work pools and how many flow runs each runs at once (safe to run again).
#   gpu: training; LORAFLOW_GPU_POOL_LIMIT, default 1 = one training per GPU with one GPU worker
#        holding one GPU: set it to the number of GPUs behind the pool, and start each worker
#        with `--limit <its GPUs>` (needed too: see docs/team.md#load), so queued runs wait
#        instead of sharing a GPU.
#   cpu: the pipeline (evaluate, register, promote) and promotions; LORAFLOW_CPU_POOL_LIMIT, default 2.
# Needs PREFECT_API_URL (and PREFECT_API_AUTH_STRING where the server has one).
set -e
prefect work-pool create gpu --type process --overwrite
prefect work-pool create cpu --type process --overwrite
prefect work-pool set-concurrency-limit gpu "${LORAFLOW_GPU_POOL_LIMIT:-1}"
prefect work-pool set-concurrency-limit cpu "${LORAFLOW_CPU_POOL_LIMIT:-2}"
