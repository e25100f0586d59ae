#!/usr/bin/env bash
# Benchmarks lb against HAProxy and nginx, in one run, on the same origins.
#
#   bash bench/run.sh BUILD_DIR [--quick] [--duration SECONDS]
#                     [--repeat N] [--proxies "lb haproxy nginx"]
#                     [--scenarios "a b c d e f idle scale"] [--rate R]
#   (e: HTTPS; f: latency at a fixed rate of R req/s, default 20000, 64
#    connections; f256: the same with 256; f80 / f80x256: at 80 % of HAProxy's
#    req/s in (a) / (b) of the same run; idle: memory per idle keep-alive
#    client connection; sys: system calls per keep-alive request, ab -k -c16;
#    insn: user instructions per request, callgrind; limit / climit: a rate
#    limit that is never reached, local / shared through a local redis-server;
#    grpc: gRPC unary calls over h2c, h2load posting one fixed message, to 2
#    x grpc_origin: lb protocol h2c, HAProxy proto h2, nginx grpc_pass; u:
#    256 KiB uploads, wrk -s conf/post-256k.lua, 16 connections)
#
# Topology (everything on 127.0.0.1):
#   wrk (CPU 1) -> proxy (CPU 0) -> 2 x fast_origin (CPU 1), round robin
# Each proxy runs with one worker/thread, no logging, upstream keep-alive, and
# is started afresh for every scenario. See bench/README.md for the columns.
# The table goes to stdout and to bench/results/latest.txt, wrk's raw output
# of every run to bench/results/latest-wrk/ (rate_client's for scenario f,
# idle_client.py's for idle).
#
# Environment overrides: LB_BIN, LB_BASE_BIN (--proxies "lb lb-base ..."), FORWARD_PROBE (--proxies
# "relay-epoll relay-uring relay-splice": an L4 relay on epoll, io_uring, or epoll moving bytes by splice), ORIGIN_BIN, RATE_CLIENT, HAPROXY, NGINX, WRK,
# PYTHON, PROXY_CPU, LOAD_CPU, AB, VALGRIND.

# shellcheck disable=SC2059 # HEAD_FMT: one printf format shared by header and rows
set -u -o pipefail

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[[ $# -ge 1 && $1 != -* ]] || usage
BUILD_ARG=$1
BUILD_DIR=$1
shift
DURATION=10
WARMUP=1
QUICK=0
REPEAT=1
PROXIES="lb haproxy nginx"
SCENARIOS="a b c d e f idle scale"
RATE=20000
while [[ $# -gt 0 ]]; do
    case $1 in
    --quick) QUICK=1 DURATION=3 ;;
    --duration) DURATION=${2:?}; shift ;;
    --repeat) REPEAT=${2:?}; shift ;;
    --proxies) PROXIES=${2:?}; shift ;;
    --scenarios) SCENARIOS=${2:?}; shift ;;
    --rate) RATE=${2:?}; shift ;;
    -h | --help) usage ;;
    *) echo "run.sh: unknown argument: $1" >&2; usage ;;
    esac
    shift
done

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF_DIR=$BENCH_DIR/conf
RESULTS_DIR=$BENCH_DIR/results
BUILD_DIR=$(cd "$BUILD_DIR" 2>/dev/null && pwd) || { echo "run.sh: no build dir: ${BUILD_ARG}" >&2; exit 2; }
[[ $DURATION =~ ^[1-9][0-9]*$ && $REPEAT =~ ^[1-9][0-9]*$ && $RATE =~ ^[1-9][0-9]*$ ]] ||
    { echo "run.sh: --duration, --repeat and --rate want positive integers" >&2; exit 2; }
LB_BIN=${LB_BIN:-$BUILD_DIR/lb/lb}
LB_BASE_BIN=${LB_BASE_BIN:-}  # proxy "lb-base": another lb build, for before/after in one run
ORIGIN_BIN=${ORIGIN_BIN:-$BUILD_DIR/bench/fast_origin}
GRPC_ORIGIN_BIN=${GRPC_ORIGIN_BIN:-$BUILD_DIR/bench/grpc_origin}
RATE_CLIENT=${RATE_CLIENT:-$BUILD_DIR/bench/rate_client}
FORWARD_PROBE=${FORWARD_PROBE:-$BUILD_DIR/bench/forward_probe}
IDLE_CLIENT=$BENCH_DIR/idle_client.py
PYTHON=${PYTHON:-/usr/bin/python3}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-$(command -v wrk || echo /usr/bin/wrk)}
AB=${AB:-$(command -v ab || echo /usr/bin/ab)}
H2LOAD=${H2LOAD:-$(command -v h2load || echo /usr/bin/h2load)}
VALGRIND=${VALGRIND:-$(command -v valgrind || echo /usr/bin/valgrind)}
CLK_TCK=$(getconf CLK_TCK)

if [[ $(nproc) -ge 2 ]]; then
    PROXY_CPU=${PROXY_CPU:-0}
    LOAD_CPU=${LOAD_CPU:-1}
else
    PROXY_CPU=${PROXY_CPU:-0}
    LOAD_CPU=${LOAD_CPU:-0}
    echo "run.sh: warning: only one CPU; proxy, wrk and origins share it" >&2
fi
BOTH_CPUS="$PROXY_CPU,$LOAD_CPU"

for bin in "$ORIGIN_BIN" "$RATE_CLIENT" "$WRK"; do
    [[ -x $bin ]] || { echo "run.sh: missing $bin (build the fast_origin and rate_client targets; apt-get install wrk)" >&2; exit 2; }
done
if [[ " $SCENARIOS " == *" idle "* && ! -x $PYTHON ]]; then
    echo "run.sh: missing $PYTHON (scenario idle runs bench/idle_client.py with it)" >&2
    exit 2
fi

TMP=$(mktemp -d /tmp/lb-bench.XXXXXX)
mkdir -p "$RESULTS_DIR"
REPORT=$RESULTS_DIR/latest.txt
: >"$REPORT"

# ---------------------------------------------------------------- processes

SYSCALL_REQUESTS=20000  # scenario sys: ab's requests per measured run
STARTED=()  # every process we started; cleanup stops them (and their children)
PROXY_WRAP=()  # a command the proxy runs under (valgrind, for scenario insn)
PROXY_PID=""
FINISHED=0
NOISY=0
STOLEN=0

descendants() { # PID -> the PID and all its descendants
    local p c
    for p in "$@"; do
        echo "$p"
        for c in $(pgrep -P "$p" 2>/dev/null); do descendants "$c"; done
    done
}

stop_pid() { # PID [GRACE]: TERM the process and its children, KILL after GRACE (3) s
    local pid=$1 grace=${2:-3} all i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
    mapfile -t all < <(descendants "$pid")
    kill -TERM "${all[@]}" 2>/dev/null
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${all[@]}" 2>/dev/null
    wait "$pid" 2>/dev/null
    # nginx workers outlive a KILLed master: make sure none is left.
    for i in "${all[@]}"; do kill -KILL "$i" 2>/dev/null; done
    return 0
}

cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${STARTED[@]}"; do stop_pid "$pid"; done
    [[ $FINISHED == 1 ]] || echo "(run interrupted: results incomplete)" >>"$REPORT"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
log() { printf '%s\n' "$*" >&2; }

USED_PORTS=" "
free_port() { # a loopback TCP port that nothing uses (below the ephemeral range)
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$((20000 + RANDOM % 12000))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if [[ -z $(ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null) ]]; then
            USED_PORTS+="$p "
            echo "$p"
            return 0
        fi
    done
    return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until PID listens on PORT (and is alive). Seconds as $3.
wait_listening() {
    local pid=$1 port=$2 secs=${3:-10} i
    for ((i = 0; i < secs * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        port_open "$port" && return 0
        sleep 0.05
    done
    return 1
}

fill() { # TEMPLATE OUT key=value...
    local tmpl=$1 out=$2 expr=() kv
    shift 2
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tmpl" >"$out"
}

# start_redis: one redis-server for the run (scenario climit), on REDIS_PORT.
REDIS_PORT=""
start_redis() {
    [[ -n $REDIS_PORT ]] && return 0
    command -v redis-server >/dev/null || { log "run.sh: scenario climit needs redis-server"; return 1; }
    local port
    port=$(free_port) || return 1
    taskset -c "$LOAD_CPU" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        >"$TMP/redis.out" 2>&1 &
    STARTED+=("$!")
    wait_listening "$!" "$port" 10 || return 1
    REDIS_PORT=$port
}

start_origins() {
    local i pid port
    ORIGINS=()
    ORIGIN_PIDS=()
    for i in 1 2; do
        : >"$TMP/origin$i.out"
        taskset -c "$LOAD_CPU" "$ORIGIN_BIN" --listen 127.0.0.1:0 >"$TMP/origin$i.out" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        ORIGIN_PIDS+=("$pid")
        port=""
        for ((n = 0; n < 100; n++)); do
            port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/origin$i.out")
            [[ -n $port ]] && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if [[ -z $port ]]; then
            log "run.sh: fast_origin did not start: $(cat "$TMP/origin$i.out")"
            exit 1
        fi
        ORIGINS+=("127.0.0.1:$port")
    done
}

# start_grpc_origins: two grpc_origin (scenario grpc), once per run: GRPC_ORIGINS.
GRPC_ORIGINS=()
start_grpc_origins() {
    ((${#GRPC_ORIGINS[@]})) && return 0
    [[ -x $GRPC_ORIGIN_BIN ]] || { log "run.sh: scenario grpc needs $GRPC_ORIGIN_BIN"; return 1; }
    local i pid port n
    for i in 1 2; do
        taskset -c "$LOAD_CPU" "$GRPC_ORIGIN_BIN" --listen 127.0.0.1:0 >"$TMP/grpc_origin$i.out" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        ORIGIN_PIDS+=("$pid")
        port=""
        for ((n = 0; n < 100; n++)); do
            port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$TMP/grpc_origin$i.out")
            [[ -n $port ]] && break
            sleep 0.05
        done
        [[ -n $port ]] || { log "run.sh: grpc_origin did not start"; return 1; }
        GRPC_ORIGINS+=("127.0.0.1:$port")
    done
    # The call h2load posts: one gRPC message of 16 bytes.
    printf '\0\0\0\0\x100123456789abcdef' >"$TMP/grpc-call.bin"
}

# start_proxy NAME WORKERS CPUS: sets PROXY_PID and PROXY_PORT, or returns 1
# with START_ERR set.
start_proxy() {
    local name=$1 workers=$2 cpus=$3 dir=$TMP/$1 user_line=""
    rm -rf "$dir"
    mkdir -p "$dir"
    PROXY_PORT=$(free_port) || { START_ERR="no free port"; return 1; }
    PROXY_PID=""
    START_ERR=""
    local vars=(PORT="$PROXY_PORT" WORKERS="$workers" DIR="$dir")
    if ((GRPC)); then
        # gRPC to the backends: h2c in lb, "proto h2" in HAProxy, grpc_pass in nginx.
        vars+=(ORIGIN1="${GRPC_ORIGINS[0]}" ORIGIN2="${GRPC_ORIGINS[1]}" LB_POOL="protocol: h2c"
            HAPROXY_SERVER="proto h2" NGINX_PASS='grpc_pass grpc://origin;')
    else
        vars+=(ORIGIN1="${ORIGINS[0]}" ORIGIN2="${ORIGINS[1]}" LB_POOL="" HAPROXY_SERVER=""
            NGINX_PASS='proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection "";')
    fi
    # HAProxy's maxconn (4096) is below the idle scenario's connections: raised
    # for that scenario only (nginx's worker_connections 8192 and lb's
    # max_connections 100000 are enough for it).
    local maxconn=4096
    ((IDLE)) && maxconn=8192
    vars+=(MAXCONN="$maxconn")
    local lb_cluster=""
    if ((LIMIT == 2)); then
        start_redis || { START_ERR="redis-server did not start"; return 1; }
        lb_cluster="cluster: { redis: 127.0.0.1:$REDIS_PORT, instances: 1 }"
    fi
    vars+=(LB_CLUSTER="$lb_cluster")
    if ((LIMIT)); then
        # A rate limit per client address that nothing reaches: what the check
        # costs (climit: shared through Redis; HAProxy and nginx as in limit).
        local scope=local
        ((LIMIT == 2)) && scope=cluster
        vars+=(LB_ROUTES="routes: [ { pool: origin, rate_limit: { key: source_ip, rate: 1000000/s, burst: 1000000, scope: $scope } } ]"
            HAPROXY_RULES='stick-table type ip size 100k expire 30s store http_req_rate(1s)\n    http-request track-sc0 src\n    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000 }'
            NGINX_HTTP='limit_req_zone $binary_remote_addr zone=bench:10m rate=1000000r/s;'
            NGINX_LOCATION='/'
            NGINX_RULES='limit_req zone=bench burst=1000000 nodelay;')
    elif ((RULES)); then
        # The same rules in each proxy: a regular expression on the path, two
        # request header rules (set, remove) and one on the response (set).
        vars+=(LB_ROUTES='routes: [ { match: { path_regex: "^/[a-z0-9]*$" }, pool: origin, request_headers: { set: { X-Env: bench }, remove: [X-Debug] }, response_headers: { set: { Strict-Transport-Security: "max-age=63072000" } } } ]'
            HAPROXY_RULES='acl plain path_reg ^/[a-z0-9]*$\n    http-request set-header X-Env bench\n    http-request del-header X-Debug\n    http-response set-header Strict-Transport-Security max-age=63072000\n    use_backend origin if plain'
            NGINX_LOCATION='~ ^/[a-z0-9]*$'
            NGINX_RULES='proxy_set_header X-Env bench; proxy_set_header X-Debug ""; add_header Strict-Transport-Security max-age=63072000;')
    else
        vars+=(LB_ROUTES="routes: [ { pool: origin } ]" HAPROXY_RULES="" NGINX_LOCATION="/" NGINX_RULES="")
    fi
    ((LIMIT)) || vars+=(NGINX_HTTP="")
    if ((TLS)); then
        local alpn=http/1.1 nginx_ssl=ssl
        ((H2)) && alpn=h2,http/1.1 nginx_ssl="ssl http2"
        vars+=(LB_TLS="tls: { certificates: [ { cert: $TMP/cert.pem, key: $TMP/key.pem } ] }"
            HAPROXY_SSL="ssl crt $TMP/combined.pem alpn $alpn"
            NGINX_SSL="$nginx_ssl" NGINX_CERT="ssl_certificate $TMP/cert.pem; ssl_certificate_key $TMP/key.pem;")
    elif ((H2)); then
        # Cleartext HTTP/2 by prior knowledge: HAProxy's "proto h2" and
        # nginx's "http2" listeners speak only that; lb's listener tells it
        # apart from HTTP/1.1 by the connection preface.
        vars+=(LB_TLS="" HAPROXY_SSL="proto h2" NGINX_SSL="http2" NGINX_CERT="")
    else
        vars+=(LB_TLS="" HAPROXY_SSL="" NGINX_SSL="" NGINX_CERT="")
    fi
    case $name in
    lb | lb-base)
        local bin=$LB_BIN
        [[ $name == lb-base ]] && bin=$LB_BASE_BIN
        [[ -x $bin ]] || { START_ERR="no binary $bin"; return 1; }
        fill "$CONF_DIR/lb.yaml.in" "$dir/lb.yaml" "${vars[@]}"
        taskset -c "$cpus" "${PROXY_WRAP[@]}" "$bin" run -c "$dir/lb.yaml" >"$dir/stdout.log" 2>"$dir/stderr.log" &
        PROXY_PID=$!
        STARTED+=("$PROXY_PID")
        local i ok=0
        for ((i = 0; i < 1200; i++)); do
            if grep -q 'lb: ready' "$dir/stderr.log" 2>/dev/null; then ok=1; break; fi
            kill -0 "$PROXY_PID" 2>/dev/null || break
            sleep 0.05
        done
        if [[ $ok == 1 ]] && ! wait_listening "$PROXY_PID" "$PROXY_PORT" 5; then ok=0; fi
        ;;
    haproxy)
        [[ -x $HAPROXY ]] || { START_ERR="no binary $HAPROXY"; return 1; }
        fill "$CONF_DIR/haproxy.cfg.in" "$dir/haproxy.cfg" "${vars[@]}"
        taskset -c "$cpus" "${PROXY_WRAP[@]}" "$HAPROXY" -db -f "$dir/haproxy.cfg" >"$dir/stdout.log" 2>"$dir/stderr.log" &
        PROXY_PID=$!
        STARTED+=("$PROXY_PID")
        local ok=0
        wait_listening "$PROXY_PID" "$PROXY_PORT" 60 && ok=1
        ;;
    nginx)
        [[ -x $NGINX ]] || { START_ERR="no binary $NGINX"; return 1; }
        # As root, workers would run as "nobody" and could not use the temp
        # paths inside our private (0700) directory.
        [[ $EUID == 0 ]] && user_line="user root;"
        fill "$CONF_DIR/nginx.conf.in" "$dir/nginx.conf" "${vars[@]}" USER_LINE="$user_line"
        taskset -c "$cpus" "${PROXY_WRAP[@]}" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>"$dir/stderr.log" &
        PROXY_PID=$!
        STARTED+=("$PROXY_PID")
        local ok=0 i
        if wait_listening "$PROXY_PID" "$PROXY_PORT" 60; then
            for ((i = 0; i < 600; i++)); do # the master forks the workers after binding
                [[ $(pgrep -c -P "$PROXY_PID") -ge $workers ]] && { ok=1; break; }
                sleep 0.05
            done
        fi
        ;;
    relay-epoll | relay-uring | relay-splice)
        # bench/forward_probe: an L4 relay, no HTTP, with lb's epoll discipline,
        # with io_uring, or with lb's discipline moving the bytes by splice
        # through a pipe: what io_uring or splice would save lb (one worker).
        [[ -x $FORWARD_PROBE ]] || { START_ERR="no binary $FORWARD_PROBE (needs liburing-dev)"; return 1; }
        local io=epoll
        [[ $name == relay-uring ]] && io=io_uring
        [[ $name == relay-splice ]] && io=splice
        taskset -c "$cpus" "${PROXY_WRAP[@]}" "$FORWARD_PROBE" --io "$io" --listen "127.0.0.1:$PROXY_PORT" \
            --origin "${ORIGINS[0]}" --origin "${ORIGINS[1]}" >"$dir/stdout.log" 2>"$dir/stderr.log" &
        PROXY_PID=$!
        STARTED+=("$PROXY_PID")
        local ok=0
        wait_listening "$PROXY_PID" "$PROXY_PORT" 10 && ok=1
        ;;
    *)
        START_ERR="unknown proxy"
        return 1
        ;;
    esac
    if [[ $ok != 1 ]]; then
        START_ERR=$(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null | grep -v '^\s*$' | tail -1 | cut -c1-100)
        stop_proxy
        return 1
    fi
    return 0
}

stop_proxy() {
    [[ -n $PROXY_PID ]] && stop_pid "$PROXY_PID" "$( ((${#PROXY_WRAP[@]})) && echo 60 || echo 3)"
    PROXY_PID=""
}

cpu_ticks() { # PIDs -> utime+stime summed, in clock ticks
    local pid stat rest f total=0
    for pid in "$@"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        rest=${stat##*) } # fields from 3 on; comm may hold spaces
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

snapshot_all() { # FILE: "pid ticks" for every process, ticks = utime+stime
    # Not cutime/cstime: a reaped child would bring in CPU it used before the
    # run. So processes that end during the run are missed: a lower bound.
    cat /proc/[0-9]*/stat 2>/dev/null | awk '{
        pid = $1; sub(/^.*\) /, ""); print pid, $12 + $13 }' >"$1"
}

other_ticks() { # BEFORE AFTER EXCLUDED_PIDS...: CPU of all other processes in between
    local before=$1 after=$2
    shift 2
    awk -v skip=" $* " '
        FNR == NR { t0[$1] = $2; next }
        index(skip, " " $1 " ") { next }
        { d += ($1 in t0) ? $2 - t0[$1] : $2 }
        END { print d + 0 }' "$before" "$after"
}

steal_ticks() { # CPUs...: time the hypervisor ran something else on them, in clock ticks
    awk -v cpus=" $* " 'index(cpus, " " substr($1, 4) " ") && $1 ~ /^cpu[0-9]/ { s += $9 } END { print s + 0 }' /proc/stat
}

rss_kib() { # PIDs -> VmRSS (resident now) summed, in KiB
    local pid total=0 v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

peak_rss_kib() { # PIDs -> VmHWM summed, in KiB
    local pid total=0 v
    for pid in "$@"; do
        v=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# wrk output -> "requests rps p99_ms errors"
parse_wrk() {
    awk '
    function ms(v) {
        if (v ~ /us$/) return v * 0.001
        if (v ~ /ms$/) return v + 0
        if (v ~ /m$/) return v * 60000
        if (v ~ /s$/) return v * 1000
        return v + 0
    }
    /requests in/ { req = $1 }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "99%" { p99 = ms($2) }
    /Socket errors:/ {
        gsub(",", "")
        if ($4) err = err " connect=" $4
        if ($6) err = err " read=" $6
        if ($8) err = err " write=" $8
        if ($10) err = err " timeout=" $10
    }
    /Non-2xx or 3xx responses:/ { err = err " non2xx=" $NF }
    END {
        sub(/^ /, "", err)
        if (err == "") err = "-"
        printf "%s %s %s %s\n", (req == "" ? 0 : req), (rps == "" ? 0 : rps), (p99 == "" ? "nan" : p99), err
    }'
}

# rate_client output -> "requests rps p99_ms errors all_requests seconds p50_ms p90_ms p99.9_ms max_ms"
# parse_h2load FILE: "requests req/s p99_ms errors" from h2load's summary and
# its per-request log (FILE.log: start, status, microseconds per request).
parse_h2load() {
    local p99
    p99=$(awk '{ print $3 }' "$1.log" 2>/dev/null | sort -n |
        awk '{ v[NR] = $1 } END { i = int(NR * 0.99 + 0.5); if (i < 1) i = 1; if (NR) printf "%.3f", v[i] / 1000; else print "nan" }')
    awk -v p99="$p99" '
    /^finished in/ { rps = $4 }
    /^requests:/ { req = $8; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { non2xx = $7 + $9 }
    END {
        err = ""
        if (failed) err = err " failed=" failed
        if (errored) err = err " errored=" errored
        if (timeout) err = err " timeout=" timeout
        if (non2xx) err = err " non2xx=" non2xx
        sub(/^ /, "", err)
        if (err == "") err = "-"
        printf "%s %s %s %s\n", (req == "" ? 0 : req), (rps == "" ? 0 : rps), p99, err
    }' "$1"
}

parse_rate() {
    awk '
    /^RESULT / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        err = v["errors"] > 0 ? "errors=" v["errors"] : "-"
        printf "%s %s %.3f %s %s %s %.3f %.3f %.3f %.3f\n", v["done"], v["rate"], v["p99_us"] / 1000, err,
            v["all_done"], v["elapsed_s"], v["p50_us"] / 1000, v["p90_us"] / 1000, v["p999_us"] / 1000, v["max_us"] / 1000
        found = 1
    }
    END { if (!found) print "0 0 nan - 0 1 nan nan nan nan" }'
}

# ---------------------------------------------------------------- scenarios

declare -A S_TITLE S_CONNS S_PATH S_HEADER S_RATE_OF
S_TITLE[a]="(a) keep-alive GET /, 64 connections"
S_CONNS[a]=64 S_PATH[a]=/ S_HEADER[a]=""
S_TITLE[b]="(b) keep-alive GET /, 256 connections"
S_CONNS[b]=256 S_PATH[b]=/ S_HEADER[b]=""
S_TITLE[c]="(c) new connection per request (Connection: close), 64 connections"
S_CONNS[c]=64 S_PATH[c]=/ S_HEADER[c]="Connection: close"
S_TITLE[d]="(d) 64 KiB responses (GET /64k), keep-alive, 64 connections"
S_CONNS[d]=64 S_PATH[d]=/64k S_HEADER[d]=""
S_TITLE[u]="(u) 256 KiB uploads (POST / with a Content-Length body), keep-alive, 16 connections"
S_CONNS[u]=16 S_PATH[u]=/ S_HEADER[u]=""
S_TITLE[e]="(e) HTTPS keep-alive GET /, 64 connections (TLS 1.3, the same ECDSA P-256 certificate for all)"
S_CONNS[e]=64 S_PATH[e]=/ S_HEADER[e]=""
S_TITLE[f]="(f) latency at a fixed rate: keep-alive GET /, 64 connections, RATE req/s (open loop)"
S_CONNS[f]=64 S_PATH[f]=/ S_HEADER[f]=""
S_TITLE[f256]="(f256) latency at a fixed rate: keep-alive GET /, 256 connections, RATE req/s (open loop)"
S_CONNS[f256]=256 S_PATH[f256]=/ S_HEADER[f256]=""
S_TITLE[f80]="(f80) latency at 80 % of HAProxy's saturation in (a): keep-alive GET /, 64 connections, RATE req/s (open loop)"
S_CONNS[f80]=64 S_PATH[f80]=/ S_HEADER[f80]="" S_RATE_OF[f80]=a
S_TITLE[f80x256]="(f80x256) latency at 80 % of HAProxy's saturation in (b): keep-alive GET /, 256 connections, RATE req/s (open loop)"
S_CONNS[f80x256]=256 S_PATH[f80x256]=/ S_HEADER[f80x256]="" S_RATE_OF[f80x256]=b
S_TITLE[sys]="(sys) system calls per keep-alive GET /: ab -k -c16 -n $SYSCALL_REQUESTS, perf stat over the proxy's threads"
S_TITLE[insn]="(insn) user instructions per keep-alive GET / (callgrind: 12,000 requests minus 2,000, ab -k -c4)"
S_TITLE[insnrules]="(insnrules) as (insn), through the route of (rules)"
S_TITLE[insnlimit]="(insnlimit) as (insn), through the route of (limit)"
S_TITLE[insnclimit]="(insnclimit) as (insn), through the route of (climit): lb only (HAProxy and nginx as in insnlimit)"
S_TITLE[limit]="(limit) as (a), through a route with a rate limit per client address that is never reached"
S_CONNS[limit]=64 S_PATH[limit]=/ S_HEADER[limit]=""
S_TITLE[climit]="(climit) as (limit), lb's limit with scope: cluster (shared through a local redis-server; HAProxy and nginx as in limit)"
S_CONNS[climit]=64 S_PATH[climit]=/ S_HEADER[climit]=""
S_TITLE[rules]="(rules) as (a), through a route with a path regex and three header rules (request set and remove, response set)"
S_CONNS[rules]=64 S_PATH[rules]=/ S_HEADER[rules]=""
S_TITLE[h2]="(h2) HTTP/2 over TLS: h2load, 64 connections x 10 streams, GET / (ALPN h2)"
S_CONNS[h2]=64 S_PATH[h2]=/ S_HEADER[h2]=""
S_TITLE[h2c]="(h2c) HTTP/2 cleartext (prior knowledge): h2load, 64 connections x 10 streams, GET /"
S_CONNS[h2c]=64 S_PATH[h2c]=/ S_HEADER[h2c]=""
S_TITLE[grpc]="(grpc) gRPC unary calls, h2c both sides: h2load posting a 16-byte message, 64 connections x 10 streams, to 2 x grpc_origin"
S_CONNS[grpc]=64 S_PATH[grpc]=/bench.Echo/Unary S_HEADER[grpc]=""
H2_STREAMS=10  # scenarios h2, h2c: concurrent streams per connection
IDLE_CONNS=5000  # scenario idle: client connections held open
IDLE_WINDOW=64   # ... of which at most this many connecting or awaiting their response at once
S_TITLE[idle]="(idle) memory per idle keep-alive client connection: $IDLE_CONNS connections, one GET / each, then idle"
declare -A S_TLS=([e]=1 [h2]=1)
declare -A S_H2=([h2]=1 [h2c]=1 [grpc]=1)
declare -A S_GRPC=([grpc]=1)
declare -A S_RATE=([f]=1 [f256]=1 [f80]=1 [f80x256]=1)
declare -A S_SYSCALLS=([sys]=1)
declare -A S_INSN=([insn]=1 [insnrules]=1 [insnlimit]=1 [insnclimit]=1)
declare -A S_LIMIT=([limit]=1 [insnlimit]=1 [climit]=2 [insnclimit]=2)
declare -A S_IDLE=([idle]=1)
declare -A S_RULES=([rules]=1 [insnrules]=1)
declare -A S_SCRIPT=([u]=$BENCH_DIR/conf/post-256k.lua) # wrk -s: what each request is
FIXED_RATE=0  # the scenario being measured paces requests (rate_client, not wrk)
TLS=0  # the scenario being measured terminates HTTPS
IDLE=0  # the scenario being measured holds idle connections (idle_client.py, not wrk)
SYSCALLS=0  # the scenario being measured counts system calls (ab, perf, strace)
INSN=0  # the scenario being measured counts instructions (ab, callgrind)
H2=0  # the scenario being measured speaks HTTP/2 to the proxy (h2load, not wrk)
GRPC=0  # the scenario being measured makes gRPC calls (h2load posts, grpc_origin answers)
RULES=0  # the scenario being measured routes through listener rules
LIMIT=0  # the scenario being measured routes through a rate limit (2: scope cluster)
WRK_SCRIPT=""  # the scenario being measured shapes wrk's requests with this script

# One certificate and key for every proxy's HTTPS listener (HAProxy wants
# both in one file).
make_cert() {
    [[ -f $TMP/cert.pem ]] && return 0
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1 ||
        { log "run.sh: openssl cannot make a certificate"; return 1; }
    cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/combined.pem"
}

declare -A R_STATUS R_REQ R_RPS R_P99 R_CPUREQ R_CPUPCT R_RSS R_ERR R_OTHER R_ALL R_STEAL
declare -A R_P50 R_P90 R_P999 R_MAX
declare -A R_BPC R_RSS0 R_RSS1 R_SC R_SCWHAT R_INSN

# measure KEY PROXY WORKERS PROXY_CPUS WRK_CPUS WRK_THREADS CONNS PATH HEADER
measure() {
    local key=$1 proxy=$2 workers=$3 pcpus=$4 wcpus=$5 wthreads=$6 conns=$7 path=$8 header=$9
    local hdr=() pids=() t0 t1 out req rps p99 err
    [[ -n $header ]] && hdr=(-H "$header")
    [[ -n $WRK_SCRIPT ]] && hdr+=(-s "$WRK_SCRIPT")
    log "  $key: $proxy (workers $workers) ..."
    if ! start_proxy "$proxy" "$workers" "$pcpus"; then
        R_STATUS[$key]="$proxy failed to start${START_ERR:+: $START_ERR}"
        log "    ${R_STATUS[$key]}"
        return
    fi
    local url="http$( ((TLS)) && echo s)://127.0.0.1:$PROXY_PORT$path"
    local h2args=()
    ((GRPC)) && h2args=(-d "$TMP/grpc-call.bin" -H "content-type: application/grpc" -H "te: trailers")
    if ((H2)); then
        taskset -c "$wcpus" "$H2LOAD" -t"$wthreads" -c"$conns" -m"$H2_STREAMS" -D"$WARMUP" "${h2args[@]}" "$url" >"$TMP/warmup.txt" 2>&1
    else
        taskset -c "$wcpus" "$WRK" -t"$wthreads" -c"$conns" -d"${WARMUP}s" "${hdr[@]}" "$url" >"$TMP/warmup.txt" 2>&1
    fi
    mapfile -t pids < <(descendants "$PROXY_PID")
    local steal0 steal1 cpu_list=${wcpus//,/ }
    [[ " $cpu_list " == *" $pcpus "* ]] || cpu_list+=" ${pcpus//,/ }"
    if ((FIXED_RATE)); then
        # rate_client's own 1 s warm-up (paced, not timed) comes after wrk's.
        out=$TMP/rate-${key//[^a-z0-9]/_}.txt
        local rate_cmd=(taskset -c "$wcpus" "$RATE_CLIENT" --target "127.0.0.1:$PROXY_PORT" --path "$path"
            --connections "$conns" --rate "$SCN_RATE" --warmup 1 --duration "$DURATION")
    else
        out=$TMP/wrk-${key//[^a-z0-9]/_}.txt
    fi
    snapshot_all "$TMP/procs.before"
    steal0=$(steal_ticks $cpu_list)
    t0=$(cpu_ticks "${pids[@]}")
    if ((FIXED_RATE)); then
        "${rate_cmd[@]}" >"$out" 2>&1
    elif ((H2)); then
        out=$TMP/h2load-${key//[^a-z0-9]/_}.txt
        rm -f "$out.log"
        taskset -c "$wcpus" "$H2LOAD" -t"$wthreads" -c"$conns" -m"$H2_STREAMS" -D"$DURATION" \
            --log-file="$out.log" "${h2args[@]}" "$url" >"$out" 2>&1
    else
        taskset -c "$wcpus" "$WRK" -t"$wthreads" -c"$conns" -d"${DURATION}s" --latency "${hdr[@]}" "$url" >"$out" 2>&1
    fi
    local wrk_rc=$?
    t1=$(cpu_ticks "${pids[@]}")
    steal1=$(steal_ticks $cpu_list)
    snapshot_all "$TMP/procs.after"
    # Time the hypervisor gave the benchmark's CPUs to other guests: every
    # latency figure of a run with much of it is noisy.
    R_STEAL[$key]=$(awk -v d=$((steal1 - steal0)) -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", d * 1000 / hz }')
    # CPU used meanwhile by processes outside the benchmark (other users of the
    # machine), in % of one CPU: when it is high, the figures are noisy.
    R_OTHER[$key]=$(awk -v d="$(other_ticks "$TMP/procs.before" "$TMP/procs.after" $$ "${pids[@]}" "${ORIGIN_PIDS[@]}")" \
        -v hz="$CLK_TCK" -v s="$DURATION" 'BEGIN { v = d * 100 / hz / s; printf "%.0f", v < 0 ? 0 : v }')
    R_RSS[$key]=$(peak_rss_kib "${pids[@]}")
    local alive=1
    kill -0 "$PROXY_PID" 2>/dev/null || alive=0
    stop_proxy
    local seconds=$DURATION
    if ((FIXED_RATE)); then
        local all
        read -r req rps p99 err all seconds R_P50[$key] R_P90[$key] R_P999[$key] R_MAX[$key] < <(parse_rate <"$out")
    elif ((H2)); then
        read -r req rps p99 err < <(parse_h2load "$out")
    else
        read -r req rps p99 err < <(parse_wrk <"$out")
    fi
    if [[ $alive == 0 ]]; then
        [[ $err == - ]] && err="PROXY DIED" || err+=" PROXY DIED"
    fi
    if [[ $wrk_rc != 0 || $req == 0 ]]; then
        R_STATUS[$key]="$proxy: wrk failed (rc $wrk_rc): $(grep -v '^\s*$' "$out" | tail -1 | cut -c1-80)"
        log "    ${R_STATUS[$key]}"
        return
    fi
    R_STATUS[$key]=ok
    ((R_OTHER[$key] > 10)) && NOISY=1
    # More than 1 % of the run's time on the CPUs used was stolen.
    ((R_STEAL[$key] * 100 > DURATION * 1000 * $(wc -w <<<"$cpu_list"))) && STOLEN=1
    R_REQ[$key]=$req R_RPS[$key]=$rps R_P99[$key]=$p99 R_ERR[$key]=$err
    # At a fixed rate the proxy's CPU time covers rate_client's warm-up too:
    # divided by every request of the run, over the whole run.
    local counted=$req
    ((FIXED_RATE)) && counted=$all
    R_CPUREQ[$key]=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$counted" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
    R_CPUPCT[$key]=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$seconds" 'BEGIN { printf "%.0f", d * 100 / hz / s }')
    log "    $rps req/s, p99 ${p99} ms, ${R_CPUREQ[$key]} us/req (proxy ${R_CPUPCT[$key]}% CPU, other processes ${R_OTHER[$key]}%), errors: $err"
}

# measure_idle KEY PROXY: memory per idle keep-alive client connection. The
# proxy's resident memory (VmRSS, summed over its process tree) after one
# warm-up request, then with IDLE_CONNS connections that each had one
# keep-alive GET / answered and now sit idle; R_BPC = the difference in bytes
# divided by the connections held.
measure_idle() {
    local key=$1 proxy=$2 pids=() before after out cpid i ok failed closed err alive=1
    log "  $key: $proxy (workers 1) ..."
    if ! start_proxy "$proxy" 1 "$PROXY_CPU"; then
        R_STATUS[$key]="$proxy failed to start${START_ERR:+: $START_ERR}"
        log "    ${R_STATUS[$key]}"
        return
    fi
    local client=(taskset -c "$LOAD_CPU" "$PYTHON" "$IDLE_CLIENT" --target "127.0.0.1:$PROXY_PORT" --path /)
    if ! timeout 10 "${client[@]}" --connections 1 --timeout 5 --hold 0 >"$TMP/warmup-idle.txt" 2>&1; then
        R_STATUS[$key]="$proxy: warm-up request failed: $(grep -v '^\s*$' "$TMP/warmup-idle.txt" | tail -1 | cut -c1-80)"
        log "    ${R_STATUS[$key]}"
        stop_proxy
        return
    fi
    sleep 1
    mapfile -t pids < <(descendants "$PROXY_PID")
    before=$(rss_kib "${pids[@]}")
    out=$TMP/idle-${key//[^a-z0-9]/_}.txt
    # --hold bounds the client's life should nobody stop it.
    "${client[@]}" --connections "$IDLE_CONNS" --window "$IDLE_WINDOW" --timeout 30 --hold 120 >"$out" 2>&1 &
    cpid=$!
    STARTED+=("$cpid")
    for ((i = 0; i < 40 * 20; i++)); do # the client gives up after 30 s
        grep -q '^RESULT ' "$out" && break
        kill -0 "$cpid" 2>/dev/null || break
        sleep 0.05
    done
    if grep -q '^RESULT ' "$out"; then
        sleep 2.5 # let the proxy settle with every connection idle (lb trims its free-lists every second)
        mapfile -t pids < <(descendants "$PROXY_PID")
        after=$(rss_kib "${pids[@]}")
        R_RSS[$key]=$(peak_rss_kib "${pids[@]}")
    fi
    kill -0 "$PROXY_PID" 2>/dev/null || alive=0
    stop_pid "$cpid" # TERM: the client reports what it held, closes all and exits
    stop_proxy
    if ! grep -q '^RESULT ' "$out"; then
        R_STATUS[$key]="$proxy: idle_client failed: $(grep -v '^\s*$' "$out" | tail -1 | cut -c1-80)"
        log "    ${R_STATUS[$key]}"
        return
    fi
    ok=$(sed -n 's/^RESULT .* ok=\([0-9]*\).*/\1/p' "$out")
    failed=$(sed -n 's/^RESULT .* failed=\([0-9]*\).*/\1/p' "$out")
    closed=$(sed -n 's/^HELD .* closed=\([0-9]*\).*/\1/p' "$out")
    err=""
    ((${failed:-0} > 0)) && err+=" failed=$failed"
    ((${closed:-0} > 0)) && err+=" closed=$closed"
    [[ -z $closed ]] && err+=" no-HELD-line"
    ((alive)) || err+=" PROXY DIED"
    err=${err# }
    if ((${ok:-0} == 0)); then
        R_STATUS[$key]="$proxy: no connection got a 200 (${err:-?})"
        log "    ${R_STATUS[$key]}"
        return
    fi
    R_STATUS[$key]=ok
    R_ERR[$key]=${err:--} R_RSS0[$key]=$before R_RSS1[$key]=$after
    R_BPC[$key]=$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }')
    log "    $ok connections idle: RSS $before -> $after KiB, ${R_BPC[$key]} bytes/conn, errors: ${R_ERR[$key]}"
}

# measure_syscalls KEY PROXY: system calls per keep-alive request. The
# proxy's every thread and process counted by perf (raw_syscalls:sys_enter)
# over `ab -k -c16 -n SYSCALL_REQUESTS` after a warm-up; then strace -c over
# a second such run names the calls (strace slows the proxy, not its count).
measure_syscalls() {
    local key=$1 proxy=$2 pids=() list count failed rps spid
    log "  $key: $proxy (workers 1) ..."
    if ! start_proxy "$proxy" 1 "$PROXY_CPU"; then
        R_STATUS[$key]="$proxy failed to start${START_ERR:+: $START_ERR}"
        log "    ${R_STATUS[$key]}"
        return
    fi
    local url=http://127.0.0.1:$PROXY_PORT/ ab=(taskset -c "$LOAD_CPU" "$AB" -q -k -c16)
    "${ab[@]}" -n 2000 "$url" >/dev/null 2>&1
    mapfile -t pids < <(descendants "$PROXY_PID")
    list=$(IFS=,; echo "${pids[*]}")
    perf stat -e raw_syscalls:sys_enter -x, -o "$TMP/perf.txt" -p "$list" -- \
        "${ab[@]}" -n "$SYSCALL_REQUESTS" "$url" >"$TMP/ab.txt" 2>&1
    count=$(awk -F, '/raw_syscalls/ { print $1 }' "$TMP/perf.txt")
    failed=$(awk '/^Failed requests/ { print $3 }' "$TMP/ab.txt")
    rps=$(awk '/^Requests per second/ { print $4 }' "$TMP/ab.txt")
    local strace_args=()
    for p in "${pids[@]}"; do strace_args+=(-p "$p"); done
    timeout 120 strace -c -f -o "$TMP/strace.txt" "${strace_args[@]}" 2>/dev/null &
    spid=$!
    sleep 1
    "${ab[@]}" -n "$SYSCALL_REQUESTS" "$url" >/dev/null 2>&1
    kill -INT "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
    stop_proxy
    if [[ ! $count =~ ^[0-9]+$ || -z $rps ]]; then
        R_STATUS[$key]="$proxy: perf or ab failed: $(tail -1 "$TMP/perf.txt") $(tail -1 "$TMP/ab.txt")"
        log "    ${R_STATUS[$key]}"
        return
    fi
    R_STATUS[$key]=ok R_RPS[$key]=$rps R_ERR[$key]=$([[ ${failed:-0} == 0 ]] && echo - || echo "failed=$failed")
    R_SC[$key]=$(awk -v c="$count" -v n="$SYSCALL_REQUESTS" 'BEGIN { printf "%.2f", c / n }')
    R_SCWHAT[$key]=$(awk -v n="$SYSCALL_REQUESTS" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
        printf "%s %.2f, ", $NF, $4 / n; if (++k == 5) exit }' "$TMP/strace.txt" | sed 's/, $//')
    log "    ${R_SC[$key]} system calls/request ($rps req/s; ${R_SCWHAT[$key]:-no strace}), errors: ${R_ERR[$key]}"
}

# measure_insn KEY PROXY: user instructions per request, under callgrind: the
# proxy's total over 2,000 keep-alive requests and over 12,000 (each in a
# fresh process, ab -k -c4), the difference divided by 10,000.
measure_insn() {
    local key=$1 proxy=$2 n total=() f
    log "  $key: $proxy (workers 1, under callgrind) ..."
    for n in 2000 12000; do
        PROXY_WRAP=("$VALGRIND" --tool=callgrind --trace-children=yes
            "--callgrind-out-file=$TMP/cg-$proxy-$n.%p")
        rm -f "$TMP"/cg-"$proxy"-"$n".*
        if ! start_proxy "$proxy" 1 "$PROXY_CPU"; then
            PROXY_WRAP=()
            R_STATUS[$key]="$proxy failed to start under callgrind${START_ERR:+: $START_ERR}"
            log "    ${R_STATUS[$key]}"
            stop_proxy
            return
        fi
        taskset -c "$LOAD_CPU" "$AB" -q -k -c4 -n "$n" "http://127.0.0.1:$PROXY_PORT/" >"$TMP/ab-insn.txt" 2>&1
        stop_proxy
        PROXY_WRAP=()
        total+=("$(cat "$TMP"/cg-"$proxy"-"$n".* 2>/dev/null | awk '/^totals:/ { s += $2 } END { print s + 0 }')")
    done
    if [[ ${total[0]} == 0 || ${total[1]} == 0 ]]; then
        R_STATUS[$key]="$proxy: no callgrind totals"
        log "    ${R_STATUS[$key]}"
        return
    fi
    R_STATUS[$key]=ok R_ERR[$key]=-
    R_INSN[$key]=$(awk -v a="${total[0]}" -v b="${total[1]}" 'BEGIN { printf "%.0f", (b - a) / 10000 }')
    log "    ${R_INSN[$key]} instructions/request (totals ${total[0]}, ${total[1]})"
}

HEAD_FMT="%-10s %9s %8s %11s %6s %8s %8s %6s  %s"
IDLE_FMT="%-10s %10s %9s %8s %11s %6s %8s %8s %6s  %s"
RATE_FMT="%-10s %9s %7s %7s %7s %8s %7s %11s %6s %6s  %s"
table_header() {
    if ((SYSCALLS)); then
        say "$(printf "%-10s %13s %9s  %-60s %s" "$1" "syscalls/req" "req/s" "of which (per request)" "errors")"
    elif ((INSN)); then
        say "$(printf "%-10s %12s" "$1" "insn/req")"
    elif ((IDLE)); then
        say "$(printf "$IDLE_FMT" "$1" "bytes/conn" "req/s" "p99 ms" "CPU us/req" "CPU %" "RSS MiB" "other %" "steal" "errors")"
    elif ((FIXED_RATE)); then
        say "$(printf "$RATE_FMT" "$1" "req/s" "p50 ms" "p90 ms" "p99 ms" "p99.9 ms" "max ms" "CPU us/req" "CPU %" "steal" "errors")"
    else
        say "$(printf "$HEAD_FMT" "$1" "req/s" "p99 ms" "CPU us/req" "CPU %" "RSS MiB" "other %" "steal" "errors")"
    fi
}
table_row() { # LABEL KEY
    local label=$1 key=$2
    if [[ ${R_STATUS[$key]:-} != ok ]]; then
        say "$(printf "%-10s %s" "$label" "${R_STATUS[$key]:-not run}")"
        return
    fi
    if ((SYSCALLS)); then
        say "$(printf "%-10s %13s %9s  %-60s %s" "$label" "${R_SC[$key]}" "$(printf %.0f "${R_RPS[$key]}")" "${R_SCWHAT[$key]}" "${R_ERR[$key]}")"
    elif ((INSN)); then
        say "$(printf "%-10s %12s" "$label" "${R_INSN[$key]}")"
    elif ((IDLE)); then
        say "$(printf "$IDLE_FMT" "$label" "${R_BPC[$key]}" - - - - \
            "$(awk -v k="${R_RSS[$key]}" 'BEGIN { printf "%.1f", k / 1024 }')" - - "${R_ERR[$key]}")"
        say "$(printf "%-10s %s" "" "$(awk -v b="${R_RSS0[$key]}" -v a="${R_RSS1[$key]}" -v n="$IDLE_CONNS" \
            'BEGIN { printf "(RSS %.1f MiB after one request, %.1f MiB with %d idle connections)", b / 1024, a / 1024, n }')")"
    elif ((FIXED_RATE)); then
        say "$(printf "$RATE_FMT" "$label" "$(printf %.0f "${R_RPS[$key]}")" "$(printf %.2f "${R_P50[$key]}")" \
            "$(printf %.2f "${R_P90[$key]}")" "$(printf %.2f "${R_P99[$key]}")" "$(printf %.2f "${R_P999[$key]}")" \
            "$(printf %.1f "${R_MAX[$key]}")" "${R_CPUREQ[$key]}" "${R_CPUPCT[$key]}" "${R_STEAL[$key]}" "${R_ERR[$key]}")"
    else
        say "$(printf "$HEAD_FMT" "$label" "$(printf %.0f "${R_RPS[$key]}")" "$(printf %.2f "${R_P99[$key]}")" \
            "${R_CPUREQ[$key]}" "${R_CPUPCT[$key]}" "$(awk -v k="${R_RSS[$key]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "${R_OTHER[$key]}" "${R_STEAL[$key]}" "${R_ERR[$key]}")"
    fi
    [[ -n ${R_ALL[$key]:-} ]] && say "$(printf "%-10s %s" "" "(each figure the median of ${R_ALL[$key]})")"
    return 0
}

# median_of KEY ARRAY: the median of ARRAY[KEY#1..KEY#REPEAT] over the runs
# that succeeded (the upper middle one for an even count).
median_of() {
    local key=$1 i k
    local -n values=$2
    for ((i = 1; i <= REPEAT; i++)); do
        k="$key#$i"
        [[ ${R_STATUS[$k]:-} == ok ]] && echo "${values[$k]}"
    done | sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int(NR / 2) + 1] }'
}

# pick_median KEY: KEY#1..KEY#REPEAT -> KEY. req/s, CPU/req and the latency
# figures are each the median of their runs (a run with a stall of the VM
# moves one p99, not the reported one); the other columns come from the run
# with the median req/s. R_ALL[KEY] says how many runs when REPEAT > 1.
#
# For the idle scenario: the run with the median bytes/conn gives every column.
pick_median() {
    local key=$1 i k ok=() sorted n a by=R_RPS what=req/s
    ((IDLE)) && by=R_BPC what=bytes/conn
    ((SYSCALLS)) && by=R_SC what=syscalls/req
    ((INSN)) && by=R_INSN what=insn/req
    local -n sortby=$by
    for ((i = 1; i <= REPEAT; i++)); do
        k="$key#$i"
        [[ ${R_STATUS[$k]:-} == ok ]] && ok+=("$(awk -v v="${sortby[$k]}" 'BEGIN { printf "%.0f", v * 100 }') $k")
    done
    if [[ ${#ok[@]} == 0 ]]; then
        R_STATUS[$key]=${R_STATUS[$key#$REPEAT]:-not run}
        return
    fi
    mapfile -t sorted < <(printf '%s\n' "${ok[@]}" | sort -n)
    n=${#sorted[@]}
    k=${sorted[n / 2]#* }
    R_STATUS[$key]=ok R_REQ[$key]=${R_REQ[$k]:-} R_CPUPCT[$key]=${R_CPUPCT[$k]:-} R_RSS[$key]=${R_RSS[$k]:-}
    R_ERR[$key]=${R_ERR[$k]:-} R_OTHER[$key]=${R_OTHER[$k]:-} R_STEAL[$key]=${R_STEAL[$k]:-}
    if ((IDLE)); then
        R_BPC[$key]=${R_BPC[$k]} R_RSS0[$key]=${R_RSS0[$k]} R_RSS1[$key]=${R_RSS1[$k]}
    fi
    if ((SYSCALLS || INSN)); then
        R_SC[$key]=${R_SC[$k]:-} R_SCWHAT[$key]=${R_SCWHAT[$k]:-} R_RPS[$key]=${R_RPS[$k]:-}
        R_INSN[$key]=${R_INSN[$k]:-}
    fi
    ((IDLE || SYSCALLS || INSN)) || for a in R_RPS R_P99 R_CPUREQ; do
        local -n arr=$a
        arr[$key]=$(median_of "$key" "$a")
    done
    if ((FIXED_RATE)); then
        for a in R_P50 R_P90 R_P999 R_MAX; do
            local -n arr2=$a
            arr2[$key]=$(median_of "$key" "$a")
        done
    fi
    # insn is exact and measured once (the first round): no median to give.
    if ((REPEAT > 1 && !INSN)); then
        R_ALL[$key]="${#ok[@]} runs ($what $(for a in "${sorted[@]}"; do printf '%s\n' "${sortby[${a#* }]}"; done | awk '{ printf ($1 >= 100 ? "%.0f\n" : "%s\n"), $1 }' | paste -sd' '))"
        ((${#ok[@]} < REPEAT)) && R_ALL[$key]+=", $((REPEAT - ${#ok[@]})) failed"
    fi
}

ratio() { # A B -> "x1.23" or "n/a"
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a == "" || b == "" || b + 0 == 0 || a == "nan" || b == "nan") print "n/a"; else printf "x%.2f", a / b }'
}

ratio_cells() { # SCN OTHER [ONE] -> "req/s CPU/req p99" ratios of ONE (default lb) to OTHER
    local a=$1:${3:-lb} b=$1:$2
    if [[ ${R_STATUS[$a]:-} != ok || ${R_STATUS[$b]:-} != ok ]]; then
        echo "n/a n/a n/a"
        return
    fi
    echo "$(ratio "${R_RPS[$a]}" "${R_RPS[$b]}") $(ratio "${R_CPUREQ[$a]}" "${R_CPUREQ[$b]}") $(ratio "${R_P99[$a]}" "${R_P99[$b]}")"
}

# ---------------------------------------------------------------- run

version_of() {
    case $1 in
    lb | lb-base)
        local v bin=$LB_BIN
        [[ $1 == lb-base ]] && bin=$LB_BASE_BIN
        if [[ ! -x $bin ]]; then
            echo "not built ($bin)"
        elif v=$(timeout 2 "$bin" version 2>/dev/null </dev/null) && [[ -n $v ]]; then
            echo "${v%%$'\n'*}"
        else
            echo "$bin (version unknown)"
        fi
        ;;
    haproxy) "$HAPROXY" -v 2>/dev/null | head -1 | cut -d' ' -f1-3 ;;
    nginx) "$NGINX" -v 2>&1 | head -1 | sed 's/^nginx version: //' ;;
    relay-epoll | relay-uring | relay-splice) echo "bench/forward_probe --io ${1#relay-} (an L4 relay, no HTTP)" ;;
    esac
}

start_origins

say "lb benchmark  $(date -u '+%Y-%m-%d %H:%M:%S UTC')  ($( ((QUICK)) && echo quick, )${DURATION} s per run after ${WARMUP} s warm-up$( ((REPEAT > 1)) && echo ", median of $REPEAT runs"))"
say "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), kernel $(uname -r), load avg $(cut -d' ' -f1-3 /proc/loadavg)"
say "git: $(git -C "$BENCH_DIR" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$BENCH_DIR" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
for p in $PROXIES; do say "$(printf '%-8s %s' "$p:" "$(version_of "$p")")"; done
say "topology: wrk -t1 + 2 fast_origin on CPU $LOAD_CPU -> proxy (1 worker, no log, upstream keep-alive, round robin) on CPU $PROXY_CPU"
say "origins: ${ORIGINS[*]}"

SUMMARY=()
for scn in $SCENARIOS; do
    [[ $scn == scale ]] && continue
    [[ -n ${S_TITLE[$scn]:-} ]] || { log "run.sh: unknown scenario $scn"; continue; }
    SCN_RATE=$RATE
    if [[ -n ${S_RATE_OF[$scn]:-} ]]; then
        base=${S_RATE_OF[$scn]}:haproxy
        if [[ ${R_STATUS[$base]:-} != ok ]]; then
            log "run.sh: scenario $scn needs ${S_RATE_OF[$scn]} run with haproxy first (--scenarios \"${S_RATE_OF[$scn]} ... $scn\")"
            continue
        fi
        SCN_RATE=$(awk -v r="${R_RPS[$base]}" 'BEGIN { printf "%.0f", r * 0.8 }')
    fi
    S_TITLE[$scn]=${S_TITLE[$scn]//RATE/$SCN_RATE}
    log "${S_TITLE[$scn]}"
    TLS=${S_TLS[$scn]:-0}
    FIXED_RATE=${S_RATE[$scn]:-0}
    IDLE=${S_IDLE[$scn]:-0}
    SYSCALLS=${S_SYSCALLS[$scn]:-0}
    INSN=${S_INSN[$scn]:-0}
    H2=${S_H2[$scn]:-0}
    GRPC=${S_GRPC[$scn]:-0}
    RULES=${S_RULES[$scn]:-0}
    LIMIT=${S_LIMIT[$scn]:-0}
    WRK_SCRIPT=${S_SCRIPT[$scn]:-}
    if ((H2)) && ! command -v "$H2LOAD" >/dev/null; then log "run.sh: scenario $scn needs h2load (nghttp2-client)"; continue; fi
    if ((SYSCALLS)) && ! command -v "$AB" >/dev/null; then log "run.sh: scenario sys needs ab (apache2-utils)"; continue; fi
    if ((INSN)) && ! command -v "$VALGRIND" >/dev/null; then log "run.sh: scenario insn needs valgrind"; continue; fi
    ((TLS)) && { make_cert || continue; }
    ((GRPC)) && { start_grpc_origins || continue; }
    for ((i = 1; i <= REPEAT; i++)); do
        for p in $PROXIES; do
            if ((IDLE)); then
                measure_idle "$scn:$p#$i" "$p"
            elif ((SYSCALLS)); then
                measure_syscalls "$scn:$p#$i" "$p"
            elif ((INSN)); then
                ((i == 1)) && measure_insn "$scn:$p#$i" "$p" # exact: once is enough
            else
                measure "$scn:$p#$i" "$p" 1 "$PROXY_CPU" "$LOAD_CPU" 1 "${S_CONNS[$scn]}" "${S_PATH[$scn]}" "${S_HEADER[$scn]}"
            fi
        done
    done
    for p in $PROXIES; do pick_median "$scn:$p"; done
    say ""
    say "== ${S_TITLE[$scn]} =="
    table_header proxy
    for p in $PROXIES; do table_row "$p" "$scn:$p"; done
    if [[ " $PROXIES " == *" lb "* ]]; then
        for other in haproxy nginx lb-base; do
            [[ " $PROXIES " == *" $other "* ]] || continue
            if ((SYSCALLS || INSN)); then
                local_v=R_SC
                ((INSN)) && local_v=R_INSN
                declare -n vals=$local_v
                b="n/a"
                [[ ${R_STATUS[$scn:lb]:-} == ok && ${R_STATUS[$scn:$other]:-} == ok ]] &&
                    b=$(ratio "${vals[$scn:lb]}" "${vals[$scn:$other]}")
                unset -n vals
                say "$(printf '  lb/%-8s %s %-6s' "$other:" "$( ((INSN)) && echo insn/req || echo syscalls/req)" "$b")"
                continue
            fi
            if ((IDLE)); then
                b="n/a"
                [[ ${R_STATUS[$scn:lb]:-} == ok && ${R_STATUS[$scn:$other]:-} == ok ]] &&
                    b=$(ratio "${R_BPC[$scn:lb]}" "${R_BPC[$scn:$other]}")
                say "$(printf '  lb/%-8s bytes/conn %-6s' "$other:" "$b")"
                continue # not in the summary: its columns are req/s, CPU/req and p99
            fi
            read -r r c l <<<"$(ratio_cells "$scn" "$other")"
            if ((FIXED_RATE)); then
                local_extra=""
                if [[ ${R_STATUS[$scn:lb]:-} == ok && ${R_STATUS[$scn:$other]:-} == ok ]]; then
                    local_extra="  p50 $(ratio "${R_P50[$scn:lb]}" "${R_P50[$scn:$other]}")  p99.9 $(ratio "${R_P999[$scn:lb]}" "${R_P999[$scn:$other]}")"
                fi
                say "$(printf '  lb/%-8s CPU/req %-6s p99 %-6s' "$other:" "$c" "$l")$local_extra"
            else
                say "$(printf '  lb/%-8s req/s %-6s CPU/req %-6s p99 %-6s' "$other:" "$r" "$c" "$l")"
            fi
            SUMMARY+=("$scn $other $r $c $l")
        done
    fi
    for relay in uring splice; do
        [[ " $PROXIES " == *" relay-epoll "* && " $PROXIES " == *" relay-$relay "* ]] && ! ((IDLE || INSN)) || continue
        if ((SYSCALLS)); then
            b="n/a"
            [[ ${R_STATUS[$scn:relay-$relay]:-} == ok && ${R_STATUS[$scn:relay-epoll]:-} == ok ]] &&
                b=$(ratio "${R_SC[$scn:relay-$relay]}" "${R_SC[$scn:relay-epoll]}")
            say "  relay $relay/epoll: syscalls/req $b"
        else
            read -r r c l <<<"$(ratio_cells "$scn" relay-epoll "relay-$relay")" # relay-$relay over epoll
            say "  relay $relay/epoll: req/s $r  CPU/req $c  p99 $l"
        fi
    done
    TLS=0 FIXED_RATE=0 IDLE=0 SYSCALLS=0 INSN=0 H2=0 RULES=0 GRPC=0 WRK_SCRIPT=""
done

if [[ " $SCENARIOS " == *" scale "* && " $PROXIES " == *" lb "* ]]; then
    log "scaling: lb workers 1 vs 2"
    for ((i = 1; i <= REPEAT; i++)); do
        for w in 1 2; do
            measure "scale:w$w#$i" lb "$w" "$BOTH_CPUS" "$BOTH_CPUS" 2 64 / ""
        done
    done
    pick_median scale:w1
    pick_median scale:w2
    say ""
    say "== scaling: lb workers 1 vs 2 (keep-alive GET /, 64 connections; lb and wrk -t2 on CPUs $BOTH_CPUS, origins on CPU $LOAD_CPU) =="
    table_header workers
    table_row "1" "scale:w1"
    table_row "2" "scale:w2"
    if [[ ${R_STATUS[scale:w1]:-} == ok && ${R_STATUS[scale:w2]:-} == ok ]]; then
        say "  workers 2 / workers 1: req/s $(ratio "${R_RPS[scale:w2]}" "${R_RPS[scale:w1]}")  CPU/req $(ratio "${R_CPUREQ[scale:w2]}" "${R_CPUREQ[scale:w1]}")  p99 $(ratio "${R_P99[scale:w2]}" "${R_P99[scale:w1]}")"
    else
        say "  workers 2 / workers 1: n/a"
    fi
fi

if [[ ${#SUMMARY[@]} -gt 0 ]]; then
    say ""
    say "== summary: lb relative to the others (req/s: above 1 is better; CPU/req and p99: below 1 is better) =="
    say "$(printf '%-9s %-8s %8s %8s %8s' scenario vs req/s CPU/req p99)"
    for row in "${SUMMARY[@]}"; do
        read -r s o r c l <<<"$row"
        say "$(printf '%-9s %-8s %8s %8s %8s' "($s)" "$o" "$r" "$c" "$l")"
    done
fi

if ((STOLEN)); then
    say ""
    say "note: the hypervisor ran other guests on the benchmark's CPUs for more than 1 % of some runs (\"steal\", in ms): their latency figures are noisy."
fi
if ((NOISY)); then
    say ""
    say "note: other processes used more than 10 % of a CPU during some runs (\"other %\"): those figures are noisy."
fi
FINISHED=1
rm -rf "$RESULTS_DIR/latest-wrk"
mkdir -p "$RESULTS_DIR/latest-wrk"
cp "$TMP"/wrk-*.txt "$TMP"/rate-*.txt "$TMP"/idle-*.txt "$RESULTS_DIR/latest-wrk/" 2>/dev/null
log ""
log "saved to $REPORT (wrk's own output of every run: $RESULTS_DIR/latest-wrk/)"
