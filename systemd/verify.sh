#!/usr/bin/env bash
# Checks the files of systemd/ and tuning/ against the built binaries, without a running systemd:
#   systemd/verify.sh BIN_DIR      (BIN_DIR holds the built `gate` and `router`)
# 1. `systemd-analyze verify` on copies of the units whose ExecStart points at BIN_DIR: unknown
#    keys, bad values and missing executables. It prints unknown keys but still exits 0, so any
#    output counts as a failure here. It does not resolve User= offline: the imgate user need
#    not exist on this machine (step 3 checks the file that creates it).
# 2. `systemd-analyze security --offline`: the sandbox keeps its exposure score low.
# 3. `systemd-sysusers --root` creates the imgate user and group in a scratch root.
# 4. the example configs pass `gate --check` / `router --check`.
# 5. every key of tuning/99-imgate.conf exists in /proc/sys (a "-" line may be missing).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=$(cd "${1:?usage: systemd/verify.sh BIN_DIR}" && pwd)
for b in gate router; do
    [ -x "$bin_dir/$b" ] || { echo "verify: no executable $bin_dir/$b" >&2; exit 1; }
done

if ! command -v systemd-analyze >/dev/null; then
    echo "verify: installing systemd (for systemd-analyze)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

echo "== systemd-analyze verify"
for unit in imgate-gate.service imgate-router.service; do
    sed -e "s#/usr/local/bin/#$bin_dir/#g" "systemd/$unit" >"$scratch/$unit"
    grep -q "ExecStart=$bin_dir/" "$scratch/$unit" || { echo "verify: $unit: ExecStart not rewritten" >&2; exit 1; }
done
out=$(cd "$scratch" && systemd-analyze verify --man=no ./imgate-gate.service ./imgate-router.service 2>&1) || {
    echo "$out" >&2
    exit 1
}
if [ -n "$out" ]; then
    echo "$out" >&2
    echo "verify: systemd-analyze verify printed the above" >&2
    exit 1
fi
echo "units verify cleanly"

echo "== systemd-analyze security (offline)"
for unit in imgate-gate.service imgate-router.service; do
    # --threshold: fail above this exposure (score x 10); the units score 1.5 of 10.
    systemd-analyze security --offline=yes --threshold=20 "$scratch/$unit" | tail -1
done

echo "== systemd-sysusers"
mkdir -p "$scratch/root/etc" "$scratch/root/etc/sysusers.d"
cp systemd/imgate.sysusers.conf "$scratch/root/etc/sysusers.d/imgate.conf"
systemd-sysusers --root="$scratch/root"
grep -q '^imgate:' "$scratch/root/etc/passwd"
grep -q '^imgate:' "$scratch/root/etc/group"
echo "imgate user and group created in a scratch root"

echo "== example configs"
"$bin_dir/gate" --check --config systemd/gate.toml >/dev/null
"$bin_dir/router" --check --config systemd/router.toml >/dev/null
echo "systemd/gate.toml and systemd/router.toml are valid"

echo "== tuning/99-imgate.conf keys"
missing=0
while IFS= read -r line; do
    case "$line" in '' | '#'* | ';'*) continue ;; esac
    key=${line%%=*}
    key=$(echo "$key" | tr -d '[:space:]')
    optional=0
    case "$key" in -*) optional=1; key=${key#-} ;; esac
    if [ ! -e "/proc/sys/${key//.//}" ] && [ "$optional" -eq 0 ]; then
        echo "verify: tuning/99-imgate.conf: no such sysctl $key" >&2
        missing=1
    fi
done <tuning/99-imgate.conf
[ "$missing" -eq 0 ]
echo "every sysctl in tuning/99-imgate.conf exists"
