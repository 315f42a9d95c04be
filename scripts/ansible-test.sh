#!/usr/bin/env bash
# Run ansible-test (sanity, units, ...) on this checkout. ansible-test insists on a tree at
# .../ansible_collections/<namespace>/<name>/ without directory symlinks, so the tracked and
# untracked-but-not-ignored files are copied to a temporary one first. HOME points into
# .cache so ansible-test's venvs and the get-pip stand-in stay with the checkout.
#   scripts/ansible-test.sh sanity [ansible-test options]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="$repo/.cache/ansible-test"
# outside the checkout: inside it, ansible-test would ask this repo's git, which ignores the copy
tree=$(mktemp -d "${TMPDIR:-/tmp}/exchpatch-ansible-test.XXXXXX")
trap 'rm -rf "$tree"' EXIT
work="$tree/ansible_collections/exchangeops/patching"
python=$("$repo/.venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

mkdir -p "$cache/home/.ansible/test/cache"
# the pip version ansible-test bootstraps into its venvs (get_venv_packages in ansible-test)
pip_version=$(grep -ho "pip='[0-9.]*'" "$("$repo/.venv/bin/python" -c 'import ansible_test, os; print(os.path.dirname(ansible_test.__file__))')/_internal/python_requirements.py" | head -1 | tr -dc '0-9.' | tr . _)
cp "$repo/tests/sanity/get_pip_standin.py" "$cache/home/.ansible/test/cache/get_pip_${pip_version}.py"

mkdir -p "$work"
cd "$repo"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || continue
  mkdir -p "$work/$(dirname "$f")"
  # a file another process replaces (an editor's temp file) may be gone by now: skip it, fail on anything else
  cp -p "$f" "$work/$f" 2>/dev/null || [ ! -e "$f" ] || cp -p "$f" "$work/$f"
done
cd "$work"
export HOME="$cache/home"
"$repo/.venv/bin/ansible-test" "$@" --python "$python" --color no
