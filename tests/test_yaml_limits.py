"""Every YAML file voxline reads is bounded before it becomes Python objects.

A few hundred bytes of nested anchors ("billion laughs") expand to billions of
values; the loader measures the expanded size on the parsed node graph, so such
a file is refused at once with its line, while ordinary anchors keep working.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from voxline.config import load_config
from voxline.personas import load_persona
from voxline.tools.spec import load_tool_spec
from voxline.yamlfile import MAX_EXPANDED_NODES, MAX_FILE_BYTES, ConfigError, read_yaml


def laughs(levels: int, width: int = 9) -> str:
    """Anchors ``l0`` .. ``l<levels>``, each a list of ``width`` aliases of the one before."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def refusal(path: Path, load=read_yaml) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    assert len(info.value.problems) == 1, info.value.problems
    return str(info.value)


def test_billion_laughs_persona_is_refused_naming_its_line(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: bomb\nprompt: hi\n" + laughs(8) + "tools: *l8\n")
    assert path.stat().st_size < 1000
    message = refusal(path, load_persona)
    # l5 (9**6 = 531 441 values) is the first anchor over the bound; it is on line 8.
    assert message.startswith(f"{path}: line 8: YAML aliases expand")
    assert f"more than {MAX_EXPANDED_NODES:,} values" in message


@pytest.mark.parametrize(
    ("load", "text"),
    [
        (load_tool_spec, "name: t\ndescription: d\nhttp: {url: 'https://x.example'}\n"),
        (load_config, "max_calls: 2\n"),
    ],
    ids=["tool spec", "server config"],
)
def test_the_same_bound_guards_tool_specs_and_the_server_config(tmp_path, load, text):
    path = tmp_path / "file.yaml"
    path.write_text(laughs(7) + text + "x-more: *l7\n")
    assert "YAML aliases expand" in refusal(path, load)


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            name: anchors
            prompt: &line Thanks for calling.
            greeting: *line
            stt: &stt {model: tiny.en}
            turn:
              <<: {model: none, stop_secs: 0.6}
              early_secs: 0.2
            """
        )
    )
    persona = load_persona(path)
    assert persona.greeting == persona.system_prompt == "Thanks for calling."
    assert (persona.turn.model, persona.turn.stop_secs, persona.turn.early_secs) == (
        "none",
        0.6,
        0.2,
    )


def test_expansion_just_under_the_bound_loads(tmp_path):
    path = tmp_path / "list.yaml"
    # 10**4 strings through 4 levels of aliases: far below the bound, loaded as written.
    path.write_text(laughs(3, width=10) + "all: *l3\n")
    document = read_yaml(path)
    assert len(document["all"]) == 10 and len(document["all"][0][0][0]) == 10


def test_aliases_of_one_long_text_are_bounded_by_characters(tmp_path):
    path = tmp_path / "persona.yaml"
    text = "lol " * 50_000
    path.write_text(f"name: t\nprompt: &t {text}\ntools: [{', '.join(['*t'] * 40)}]\n")
    assert "characters" in refusal(path, load_persona)


def test_nesting_is_bounded_even_when_aliases_build_it(tmp_path):
    path = tmp_path / "tool.yaml"
    # Each anchor wraps the one before in 10 more lists: 70 levels in 300 bytes.
    lines = ["a0: &a0 " + "[" * 10 + "x" + "]" * 10]
    lines += [f"a{i}: &a{i} " + "[" * 10 + f"*a{i - 1}" + "]" * 10 for i in range(1, 7)]
    path.write_text("\n".join(lines) + "\nname: t\n")
    assert "nested more than 64 levels deep" in refusal(path)
    path.write_text("\n".join(lines[:5]) + "\nname: t\n")  # 50 levels: fine
    assert read_yaml(path)["name"] == "t"


def test_recursive_anchor_is_refused(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: t\nprompt: hi\ntools: &loop [end_call, *loop]\n")
    assert f"{path}: line 3: a YAML alias refers to a value that contains it" in refusal(
        path, load_persona
    )


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: first\nprompt: hi\nllm: {max_tokens: 40}\nname: second\n")
    assert f"{path}: line 4: name: the key is given twice" in refusal(path, load_persona)


def test_a_ten_megabyte_file_is_refused_without_being_parsed(tmp_path):
    path = tmp_path / "persona.yaml"
    with path.open("w") as file:
        file.write("name: big\nprompt: |\n")
        file.write(("  " + "x" * 98 + "\n") * (10 * 2**20 // 100))
    message = refusal(path, load_persona)
    assert f"larger than the {MAX_FILE_BYTES:,} bytes" in message


def test_python_values_yaml_cannot_build_name_their_line(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: t\nprompt: hi\nfiller_after_ms: " + "9" * 5000 + "\n")
    assert f"{path}: line 3, column 18: YAML error: cannot read '99999" in refusal(path)
    path.write_text("name: t\nprompt: hi\ndescription: 2026-13-45\n")
    assert "quote it to keep it as text" in refusal(path)


def test_a_fifo_is_refused_instead_of_read_forever(tmp_path):
    import os

    path = tmp_path / "persona.yaml"
    os.mkfifo(path)
    assert "is not a regular file" in refusal(path, load_persona)


def test_a_wrong_value_is_quoted_short(tmp_path):
    path = tmp_path / "persona.yaml"
    path.write_text("name: t\nprompt: hi\nllm: {temperature: '" + "hot " * 10_000 + "'}\n")
    message = refusal(path, load_persona)
    assert "llm.temperature" in message
    assert len(message) < 400, message


def test_a_tool_name_cannot_leave_the_tools_folder(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "secret.yaml").write_text(
        "name: secret\ndescription: d\nhttp: {url: 'https://x.example'}\n"
    )
    path = tmp_path / "personas" / "p.yaml"
    path.parent.mkdir()
    path.write_text("name: t\nprompt: hi\ntools: ['../secret']\n")
    assert "'../secret' is not a tool name" in refusal(path, load_persona)


def test_a_tool_module_that_exits_on_import_is_a_config_error(tmp_path):
    (tmp_path / "quits.py").write_text("import sys\nsys.exit(3)\n")
    path = tmp_path / "quits.yaml"
    path.write_text("name: quits\ndescription: d\npython: 'quits:run'\n")
    assert "cannot import module 'quits'" in refusal(path, load_tool_spec)


def test_check_validates_a_server_config_and_the_personas_it_names(tmp_path, voxline_env):
    import subprocess

    from tests.conftest import BANK_PERSONA, VOXLINE

    (tmp_path / "broken.yaml").write_text("name: broken\nprompt: hi\nllm: {max_tokens: lots}\n")
    good = tmp_path / "voxline.yaml"
    good.write_text(f"default_persona: {BANK_PERSONA}\nmax_calls: 3\n")
    bad = tmp_path / "bad" / "voxline.yaml"
    bad.parent.mkdir()
    bad.write_text("default_persona: ../broken.yaml\nnumbers: {'+15550100001': ../broken.yaml}\n")
    result = subprocess.run(
        [VOXLINE, "check", str(good), str(bad)],
        capture_output=True,
        text=True,
        env=voxline_env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{good}: ok (server config; personas bank_support; max_calls 3)" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{bad.parent}/../broken.yaml: llm.max_tokens: "), lines[0]
    assert "valid integer" in lines[0] and "Traceback" not in result.stderr
