#!/usr/bin/env bash
# Submit a liveedit sweep to a running Ray cluster as a Ray job (docs/cluster.md).
#
#   cluster/submit.sh [--address URL] [--no-wait] SPEC [--tiny] [KEY=VALUE ...]
#
#   RAY_ADDRESS          the cluster's dashboard / job server (default http://127.0.0.1:8265,
#                        e.g. after `ray dashboard ray_cluster.yaml` forwarded it)
#   MLFLOW_TRACKING_URI  where trials log (the cluster's MLflow server, e.g. http://HEAD_IP:5000);
#                        passed to the job's driver and every worker
#   RAY_AUTH_MODE        token (the default of `ray start` clusters; the token comes from
#                        $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) or disabled
#
# Run from the repository root: the working tree is uploaded as the job's working directory
# (.gitignore'd paths stay behind) and the library travels with it (py_modules), so the job runs
# the code you have here. The commit is recorded on the sweep's MLflow run.
set -euo pipefail

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"
wait_flag=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --address) address="$2"; shift 2 ;;
    --no-wait) wait_flag=(--no-wait); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
if [[ $# -lt 1 ]]; then
  echo "usage: cluster/submit.sh [--address URL] [--no-wait] SPEC [--tiny] [KEY=VALUE ...]" >&2
  exit 2
fi
if [[ ! -f pyproject.toml || ! -d platform/liveedit ]]; then
  echo "cluster/submit.sh: run it from the repository root" >&2
  exit 2
fi
: "${MLFLOW_TRACKING_URI:?set MLFLOW_TRACKING_URI to the MLflow server of the cluster, e.g. http://HEAD_IP:5000}"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  commit="${commit}-dirty"
fi
python="${PYTHON:-python3}"
runtime_env="$("$python" -c '
import json, sys
uri, commit = sys.argv[1], sys.argv[2]
env = {
    "MLFLOW_TRACKING_URI": uri,
    "LIVEEDIT_GIT_COMMIT": commit,
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
print(json.dumps({"py_modules": ["platform/liveedit"], "env_vars": env}))
' "$MLFLOW_TRACKING_URI" "$commit")"

exec ray job submit --address "$address" "${wait_flag[@]}" --working-dir . \
  --runtime-env-json "$runtime_env" \
  -- liveedit sweep "$@"
