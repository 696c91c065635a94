# shellcheck shell=bash
# Shared helpers for the thin-csi qemu VM harness. Source it; don't run it.
#
# Cache layout (all under $THIN_CSI_CACHE):
#   kernel/<linux-image-pkg>/vmlinuz          guest kernel
#   kernel/<linux-image-pkg>/modules/*.ko     uncompressed modules we load
#   kernel/<linux-image-pkg>/modules/order    their insmod order (present ones)
#   initrd/base-<hash>.cpio.gz                reusable base initramfs
#   initrd/base-<hash>.list                   paths it contains

THIN_CSI_CACHE=${THIN_CSI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/thin-csi}
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# insmod order inside the guest (dependencies first; xfs needs libcrc32c).
VM_MODULES=(dm-mod dm-bufio libcrc32c dm-persistent-data dm-bio-prison
	dm-thin-pool loop dm-flakey dm-delay dm-snapshot xfs
	virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
	virtio_pci virtio_blk failover net_failover virtio_net)

# Host packages the harness uses (kmod is deliberately absent: the guest
# uses busybox insmod on plain .ko files).
VM_HOST_PACKAGES=(qemu-system-x86 cpio gzip busybox-static dmsetup lvm2
	thin-provisioning-tools e2fsprogs xfsprogs util-linux)

vm_log() { echo "${0##*/}: $*" >&2; }
vm_die() { echo "${0##*/}: error: $*" >&2; exit 1; }

# Run as root, through sudo when we are not root.
vm_root() {
	if [[ $(id -u) -eq 0 ]]; then "$@"
	elif command -v sudo >/dev/null; then sudo "$@"
	else vm_die "need root to run: $* (install the packages by hand or run as root)"
	fi
}

# apt-get update at most once per process: a fresh machine has no lists,
# and apt-cache answers nothing (or stale data) without them.
VM_APT_UPDATED=0
vm_apt_update() {
	[[ $VM_APT_UPDATED -eq 1 ]] && return 0
	vm_log "apt-get update"
	vm_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
		vm_die "apt-get update failed"
	VM_APT_UPDATED=1
}

vm_is_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# Install the given Debian packages if any is missing.
vm_need_packages() {
	local p missing=()
	for p in "$@"; do vm_is_installed "$p" || missing+=("$p"); done
	[[ ${#missing[@]} -eq 0 ]] && return 0
	vm_apt_update
	vm_log "installing ${missing[*]}"
	vm_root env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		vm_die "apt-get install ${missing[*]} failed"
}

vm_ensure_host_packages() { vm_need_packages "${VM_HOST_PACKAGES[@]}"; }

# Sets VM_VMLINUZ and VM_MODDIR (fetching the kernel on first use).
vm_guest_kernel() {
	local out
	out=$("$VM_DIR/guest-kernel") || vm_die "guest-kernel failed"
	VM_VMLINUZ=$(sed -n 1p <<<"$out")
	VM_MODDIR=$(sed -n 2p <<<"$out")
	[[ -f $VM_VMLINUZ && -d $VM_MODDIR ]] || vm_die "guest-kernel gave bad paths: $out"
}
