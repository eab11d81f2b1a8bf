# shellcheck shell=bash
# sshd.sh — the loopback OpenSSH peer the benchmarks compare devgpu with,
# sourced by compare.sh and cp.sh. The sourcing script defines log and
# start (run a daemon in the background, logging to a file), and sources
# wait.sh (wait_for).
#
# setup_sshd DIR PORT USER starts Debian's sshd on 127.0.0.1:PORT with a
# throwaway host key, for a plain account USER whose shell is /bin/sh and
# whose home has no start-up files, so that none skews the figures; it
# writes DIR/ssh_config with a Host "bench" that logs in with a throwaway
# key, and returns once `ssh -F DIR/ssh_config bench true` works.
setup_sshd() {
	local d=$1 port=$2 user=$3
	mkdir -p "$d" /run/sshd
	chmod 755 "$d"
	# The password is "*" rather than useradd's locked "!", which sshd
	# without PAM refuses.
	if ! id "$user" >/dev/null 2>&1; then
		useradd --no-create-home --home-dir "/home/$user" --shell /bin/sh "$user"
		log "created account $user"
	fi
	usermod --password '*' --shell /bin/sh "$user"
	install -d -o "$user" -g "$user" -m 755 "/home/$user"

	ssh-keygen -q -t ed25519 -N '' -f "$d/host_key"
	ssh-keygen -q -t ed25519 -N '' -f "$d/client_key"
	cp "$d/client_key.pub" "$d/authorized_keys"
	chmod 644 "$d/authorized_keys"

	cat >"$d/sshd_config" <<-EOF
		ListenAddress 127.0.0.1:$port
		HostKey $d/host_key
		PidFile $d/sshd.pid
		AuthorizedKeysFile $d/authorized_keys
		AllowUsers $user
		PubkeyAuthentication yes
		PasswordAuthentication no
		KbdInteractiveAuthentication no
		UsePAM no
		UseDNS no
		StrictModes no
		PermitUserEnvironment no
		PrintMotd no
		PrintLastLog no
		Banner none
		MaxStartups 100:30:200
		MaxSessions 100
		Subsystem sftp internal-sftp
		LogLevel ERROR
	EOF
	/usr/sbin/sshd -t -f "$d/sshd_config"
	start sshd "$d/sshd.log" /usr/sbin/sshd -D -e -f "$d/sshd_config"

	cat >"$d/ssh_config" <<-EOF
		Host bench
		  HostName 127.0.0.1
		  Port $port
		  User $user
		  IdentityFile $d/client_key
		  IdentitiesOnly yes
		  UserKnownHostsFile $d/known_hosts
		  StrictHostKeyChecking accept-new
		  BatchMode yes
		  LogLevel ERROR
		  ControlMaster no
		  ControlPath none
	EOF
	wait_for sshd 10 ssh -F "$d/ssh_config" bench true
}
