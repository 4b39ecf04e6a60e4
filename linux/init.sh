#!/bin/sh
# /init of the minimal Linux's shell initramfs (initramfs-shell.cpio): busybox-static from Debian,
# the file systems a shell expects, then a login shell on the console (ttyS0) for ever.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=${TERM:-vt100}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /root
echo "pyvmm: user space: $(busybox | head -1)"
export PS1='[pyvmm-linux \w]# '
cd /root
while :; do
	# cttyhack opens the console's real tty, so the shell gets job control (Ctrl-C) on ttyS0.
	setsid cttyhack sh
	echo "pyvmm: the shell exited; starting another"
done
