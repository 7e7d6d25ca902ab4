#!/bin/sh
# The container's entrypoint: runs a Procfile process by name, reading the Procfile itself so
# the image and a Heroku build can never run different commands.
#   docker run IMAGE web|worker|backfill|clock|release
# Anything else is run as given (docker run IMAGE python -m jira_mirror_cli status).
set -eu
cd "$(dirname "$0")/.."

names() { sed -n 's/^\([A-Za-z0-9_-]*\):.*/\1/p' Procfile | tr '\n' ' '; }

if [ "$#" -eq 0 ]; then
  echo "usage: docker run IMAGE PROCESS, one of: $(names)(or a command)" >&2
  exit 64
fi
case "$1" in
  *[!A-Za-z0-9_-]*) command="" ;;  # not a process name (and never a pattern for sed)
  *) command=$(sed -n "s/^$1:[[:space:]]*//p" Procfile) ;;
esac
if [ -n "$command" ]; then
  [ "$#" -eq 1 ] || { echo "the $1 process takes no arguments (it runs: $command)" >&2; exit 64; }
  # exec: the process itself receives SIGTERM (docker stop), as a dyno's does.
  exec sh -c "exec $command"
fi
if command -v "$1" >/dev/null 2>&1; then
  exec "$@"
fi
echo "unknown process '$1': the Procfile has $(names)" >&2
exit 64
