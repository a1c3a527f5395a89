#!/bin/bash
# Boot the debian-12-openstack image directly (kernel + initrd from the image, the ext4 as /dev/vda)
# under TCG with the measurement unit injected; the console goes to console.log. No NIC.
set -euo pipefail
MEM=${1:-3072}
W=/tmp/neutron-work/vm
IMG=$(ls -t ~/.cache/crowbar/os/debian-12-openstack/*/root.img.* | head -1)
mkdir -p $W && cd $W
rm -f root.img console.log
case $IMG in *.gz) gunzip -c "$IMG" ;; *) zstd -dcq "$IMG" ;; esac > root.img
truncate -s 6G root.img
e2fsck -fy root.img >/dev/null 2>&1 || true
resize2fs root.img >/dev/null 2>&1
K=$(debugfs -R "ls -p /boot" root.img 2>/dev/null | awk -F/ '{print $6}' | grep '^vmlinuz-' | sort | tail -1)
V=${K#vmlinuz-}
debugfs -R "dump /boot/vmlinuz-$V vmlinuz" root.img
debugfs -R "dump /boot/initrd.img-$V initrd.img" root.img
I=/tmp/neutron-work/inject
NET="-nic none"
if [ "${MODE:-measure}" = measure ]; then
debugfs -w -f - root.img <<CMDS
write $I/measure.sh /usr/local/sbin/measure.sh
sif /usr/local/sbin/measure.sh mode 0100755
write $I/measure.service /etc/systemd/system/measure.service
symlink /etc/systemd/system/multi-user.target.wants/measure.service /etc/systemd/system/measure.service
CMDS
else
debugfs -w -f - root.img <<CMDS
mkdir /root/.ssh
write $I/authorized_keys /root/.ssh/authorized_keys
write $I/10-eth0.network /etc/systemd/network/10-eth0.network
write $I/hostkeys.service /etc/systemd/system/hostkeys.service
symlink /etc/systemd/system/multi-user.target.wants/hostkeys.service /etc/systemd/system/hostkeys.service
CMDS
NET="-nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${SSH_PORT:-10022}-:22,hostfwd=tcp:127.0.0.1:${API_PORT:-19696}-:9696"
fi
UUID=$(blkid -o value -s UUID root.img)
echo "booting kernel $V, root UUID $UUID, ${MEM} MB"
exec qemu-system-x86_64 -name neutron-measure -machine pc -accel tcg -m $MEM -smp 1 \
  -display none -vga none -monitor none $NET \
  -kernel vmlinuz -initrd initrd.img \
  -append "root=UUID=$UUID rw console=ttyS0,115200n8 net.ifnames=0 systemd.show_status=1" \
  -drive file=root.img,format=raw,if=virtio,cache=unsafe \
  -serial file:console.log -pidfile qemu.pid -no-reboot
