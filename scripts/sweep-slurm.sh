#!/usr/bin/env bash
# A big sweep spread over a Slurm cluster as a job array: task i of n runs shard i/n into its
# own folder; a final job merges the shards into the table an unsharded run writes.
#
#   N=16 PLAN=scenarios/paper/apps-1.5b-7b.plan.yaml OUT=runs/apps \
#     sbatch --array=0-15 scripts/sweep-slurm.sh
#   # when all tasks are done:
#   chimera sweep merge runs/apps/shard-* --out runs/apps/merged
#
# Each task resumes its shard, so a preempted or failed task can simply be resubmitted.
#SBATCH --job-name=chimera-sweep
#SBATCH --cpus-per-task=4
#SBATCH --time=02:00:00
#SBATCH --output=chimera-sweep-%A_%a.log
set -euo pipefail
: "${PLAN:?set PLAN to a sweep plan}" "${OUT:?set OUT to an output folder}" "${N:?set N to the array size}"
I=${SLURM_ARRAY_TASK_ID:?run as a Slurm array task}
CHIMERA=${CHIMERA:-chimera}
"$CHIMERA" sweep --plan "$PLAN" --shard "$I/$N" --jobs "${SLURM_CPUS_PER_TASK:-1}" --resume \
  --out "$OUT/shard-$I" ${SETS:-} -q
