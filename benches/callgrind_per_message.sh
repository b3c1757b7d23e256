#!/bin/bash
# Instructions per message of one `smtprs serve`, counted by callgrind (stable on
# a noisy machine, unlike time).  Counting is switched on after start-up and a
# 20-message warm-up, and off after the load (and, durable, the deliveries).
#
#   benches/callgrind_per_message.sh sink|durable [MESSAGES] [PORT] [PYTHONPATH]
#
# PYTHONPATH: a snapshot of python/ to measure (default: the installed smtprs),
# so that two versions can be compared in turns.
set -euo pipefail
mode=$1; N=${2:-300}; port=${3:-30199}; pp=${4:-}
d=$(mktemp -d /tmp/smtprs-cg.XXXXXX)
backend=""; [ "$mode" = sink ] && backend='[queue]
backend = "null"'
cat > "$d/c.toml" <<EOT
hostname = "cg.test"
data_dir = "$d/data"
[smtpd]
max_connections = 1000
[[smtpd.listeners]]
address = "127.0.0.1:$port"
[local]
domains = ["example.test"]
maildir = "$d/mail/{user}"
$backend
EOT
PYTHONPATH=$pp valgrind --tool=callgrind --trace-children=yes --instr-atstart=no \
  --callgrind-out-file="$d/cg.%p.out" python3 -m smtprs serve -c "$d/c.toml" --workers 1 > "$d/log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 1; done
smtp-source -c -m 20 -s 5 -f a@client.test -t u@example.test "127.0.0.1:$port" > /dev/null
callgrind_control -i on > /dev/null
smtp-source -c -m "$N" -s 5 -f a@client.test -t u@example.test "127.0.0.1:$port" > /dev/null
[ "$mode" = durable ] && sleep 10  # the deliveries, counted too
callgrind_control -i off > /dev/null
kill -TERM $pid; wait $pid || true
total=$(cat "$d"/cg.*.out | grep "^totals:" | awk '{s += $2} END {print s}')
echo "$mode: $total instructions for $N messages: $((total / N)) per message"
rm -rf "$d"
