#!/bin/bash
# Instructions per message of one `smtprs serve`, counted by callgrind (stable on
# a noisy machine, unlike time).  Counting is switched on after start-up and a
# 20-message warm-up, and off after the load (and, durable, the deliveries).
#
#   benches/callgrind_per_message.sh sink|durable [MESSAGES] [PORT] [PYTHONPATH]
#
# PYTHONPATH: a snapshot of python/ to measure (default: the installed smtprs),
# so that two versions can be compared in turns.
#
# Every 250 is counted (smtp-source -v), and in durable mode every delivered
# Maildir file: a run in which not every message was accepted (and delivered)
# prints what it counted and exits 1 instead of a figure, since instructions
# "per message" are then meaningless (an unchecked run once gave 0.69x).
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
w=$(smtp-source -v -c -m 20 -s 5 -f a@client.test -t u@example.test "127.0.0.1:$port" 2>&1 | grep -c 'queued as' || true)
callgrind_control -i on > /dev/null
a=$(smtp-source -v -c -m "$N" -s 5 -f a@client.test -t u@example.test "127.0.0.1:$port" 2>&1 | grep -c 'queued as' || true)
delivered=NA
if [ "$mode" = durable ]; then  # the deliveries, counted too
  sleep 10
  delivered=$(find "$d/mail" -type f -path '*/new/*' 2>/dev/null | wc -l)
fi
callgrind_control -i off > /dev/null
kill -TERM $pid; wait $pid || true
total=$(cat "$d"/cg.*.out | grep "^totals:" | awk '{s += $2} END {print s}')
checked="accepted $w/20 warm-up, $a/$N measured; delivered $delivered (durable: expect $((N + 20)))"
if [ "$w" -ne 20 ] || [ "$a" -ne "$N" ] || { [ "$mode" = durable ] && [ "$delivered" -ne $((N + 20)) ]; }; then
  echo "$mode: not every message was accepted/delivered ($checked): no figure" >&2
  tail -5 "$d/log" >&2; rm -rf "$d"; exit 1
fi
echo "$mode: $total instructions for $N messages: $((total / N)) per message ($checked)"
rm -rf "$d"
