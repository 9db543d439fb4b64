#!/usr/bin/env bash
# Fetch the Compose Specification JSON schema that tests/test_compose_file.py validates
# docker-compose.kafka.yml against, into .local/schemas/compose-spec.json (git-ignored).
#
# The schema is not committed. It comes from a package on PyPI: check-jsonschema vendors the
# upstream compose-spec schema (schema/compose-spec.json of the compose-spec project) as
# check_jsonschema/builtin_schemas/vendor/compose-spec.json. Both the wheel and the extracted file
# are pinned by SHA-256, so every machine validates against the same bytes.
#
# Usage (from the repository root; `make setup` runs it):
#   bash scripts/fetch_compose_schema.sh            # fetch unless the pinned schema is already there
#   bash scripts/fetch_compose_schema.sh --force    # fetch again
# Environment: PYTHON (an interpreter with pip; default .venv/bin/python, else python3),
#              COMPOSE_SCHEMA_PATH (default .local/schemas/compose-spec.json).
#
# To move to a newer schema: bump PKG_VERSION, then update both hashes from
#   python3 -m pip download --no-deps -d /tmp/cj check-jsonschema==NEW && sha256sum /tmp/cj/*.whl
# and the sha256 of the member below.
set -euo pipefail

PKG_NAME="check-jsonschema"
PKG_VERSION="0.39.0"
WHEEL_SHA256="14ce5c94871c551268ea948ffe21e9f1464dc48fb20bf9a4c13deeaaf756cf9b"
MEMBER="check_jsonschema/builtin_schemas/vendor/compose-spec.json"
SCHEMA_SHA256="d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
DEST="${COMPOSE_SCHEMA_PATH:-.local/schemas/compose-spec.json}"

die() {
  echo "fetch_compose_schema: error: $*" >&2
  exit 1
}

force=0
case "${1-}" in
  "") ;;
  --force) force=1 ;;
  -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1' (use --force or --help)" ;;
esac

sha256_of() {
  sha256sum "$1" | cut -d' ' -f1
}

if [ "$force" -eq 0 ] && [ -s "$DEST" ]; then
  if [ "$(sha256_of "$DEST")" = "$SCHEMA_SHA256" ]; then
    echo "fetch_compose_schema: $DEST is present ($PKG_NAME $PKG_VERSION); nothing to do"
    exit 0
  fi
  echo "fetch_compose_schema: $DEST differs from the pinned schema ($PKG_NAME $PKG_VERSION); fetching it again"
fi

if [ -n "${PYTHON-}" ]; then
  py="$PYTHON"
elif [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else
  py=python3
fi
"$py" -m pip --version >/dev/null 2>&1 ||
  die "'$py -m pip' does not work; set PYTHON to an interpreter that has pip (for example .venv/bin/python after 'make setup')"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --require-hashes makes pip refuse a wheel whose bytes differ from the pinned ones.
printf '%s==%s --hash=sha256:%s\n' "$PKG_NAME" "$PKG_VERSION" "$WHEEL_SHA256" >"$tmp/requirements.txt"
echo "fetch_compose_schema: downloading $PKG_NAME $PKG_VERSION (wheel only, no dependencies)"
if ! "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --require-hashes -r "$tmp/requirements.txt" -d "$tmp/dl"; then
  die "pip could not download or verify $PKG_NAME==$PKG_VERSION (its message is above: a network or index problem, or a wheel whose hash differs from WHEEL_SHA256); fix that, then run 'bash scripts/fetch_compose_schema.sh' again"
fi

wheel="$tmp/dl/check_jsonschema-$PKG_VERSION-py3-none-any.whl"
[ -f "$wheel" ] || die "pip reported success but $wheel is missing (found: $(ls "$tmp/dl" 2>/dev/null | tr '\n' ' '))"

mkdir -p "$(dirname "$DEST")"
# Extract to a temporary file next to the destination, check it, then rename: never a half-written schema.
partial="$DEST.partial"
if ! "$py" - "$wheel" "$MEMBER" "$partial" <<'PY'; then
import json
import sys
import zipfile

wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as zf:
    try:
        data = zf.read(member)
    except KeyError:
        sys.exit(f"{member} is not in {wheel}")
schema = json.loads(data)
if schema.get("title") != "Compose Specification":
    sys.exit(f"{member} is not the Compose Specification schema (title {schema.get('title')!r})")
with open(out, "wb") as fh:
    fh.write(data)
PY
  rm -f "$partial"
  die "could not extract $MEMBER from the $PKG_NAME $PKG_VERSION wheel"
fi

got="$(sha256_of "$partial")"
if [ "$got" != "$SCHEMA_SHA256" ]; then
  rm -f "$partial"
  die "extracted schema has sha256 $got, expected $SCHEMA_SHA256; update SCHEMA_SHA256 only if PKG_VERSION was bumped on purpose"
fi
mv -f "$partial" "$DEST"
echo "fetch_compose_schema: wrote $DEST (Compose Specification from $PKG_NAME $PKG_VERSION)"
