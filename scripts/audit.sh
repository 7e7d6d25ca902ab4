#!/usr/bin/env bash
# Known vulnerabilities in the pinned runtime dependencies (requirements.txt), by pip-audit.
#
#   scripts/audit.sh     # exit 0: audited, none found; 1: vulnerabilities found; 2: NOT audited
#
# pip-audit is installed into a throwaway virtualenv (never into the project's) and asks PyPI's
# vulnerability data (or OSV: AUDIT_SERVICE=osv). Where only the package index can be reached
# (some CI sandboxes), pip-audit "skips" every package; this script then says NOT AUDITED and
# exits 2, so that "could not look" is never reported as "nothing found".
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PIP_AUDIT_VERSION=${PIP_AUDIT_VERSION:-2.10.1}
SERVICE=${AUDIT_SERVICE:-pypi}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m venv "$tmp/venv" >/dev/null
if ! "$tmp/venv/bin/pip" install --quiet --disable-pip-version-check "pip-audit==$PIP_AUDIT_VERSION" >"$tmp/install.log" 2>&1; then
  echo "audit: NOT AUDITED: could not install pip-audit $PIP_AUDIT_VERSION:" >&2
  tail -5 "$tmp/install.log" >&2
  exit 2
fi

# --no-deps --disable-pip: requirements.txt pins every transitive dependency itself; audit the
# pins as written, without resolving (and downloading) them again.
"$tmp/venv/bin/pip-audit" --requirement requirements.txt --no-deps --disable-pip --progress-spinner off \
  --vulnerability-service "$SERVICE" --format json --output "$tmp/report.json" 2>"$tmp/err.txt"
code=$?
if [ ! -s "$tmp/report.json" ]; then
  echo "audit: NOT AUDITED: pip-audit failed (exit $code):" >&2
  tail -5 "$tmp/err.txt" >&2
  exit 2
fi
"$tmp/venv/bin/python" - "$tmp/report.json" "$SERVICE" "$PIP_AUDIT_VERSION" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
deps = report.get("dependencies", [])
skipped = [d for d in deps if d.get("skip_reason")]
vulnerable = [d for d in deps if d.get("vulns")]
for d in vulnerable:
    for v in d["vulns"]:
        fixed = ", ".join(v.get("fix_versions") or []) or "no fix yet"
        print(f"{d['name']} {d['version']}: {v['id']} (fixed in {fixed})")
audited = len(deps) - len(skipped)
print(f"audit: {len(deps)} pinned packages, {audited} audited against {sys.argv[2]} (pip-audit {sys.argv[3]}), "
      f"{len(skipped)} skipped, {sum(len(d['vulns']) for d in vulnerable)} known vulnerabilities")
if skipped:
    reasons = sorted({d["skip_reason"].split(":")[0] for d in skipped})
    print(f"audit: NOT AUDITED: {', '.join(d['name'] for d in skipped)}: {'; '.join(reasons)} "
          "(the vulnerability service cannot be reached from here)", file=sys.stderr)
sys.exit(1 if vulnerable else 2 if skipped else 0)
PY
