"""Property-based fuzzing (hypothesis) of everything that reads user input.

The property is the same everywhere: whatever the input, a reader either succeeds or raises a
``TunespecError`` subclass (the CLI prints those as ``file:line: message — hint`` and exits 2). Any other
exception escaping is a bug: the user would see a traceback.

Fuzzed here, each with a capped number of examples so the file runs in well under a minute:

* the spec loader: random text, random YAML documents built from the spec's own key names, random
  mutations of every example spec (deleted keys, swapped types, random strings, random nesting) and
  random ``--set`` arguments;
* the data-file reader (random bytes for every file type) and the format converters (``convert_rows``
  for every format, and ``convert_row`` into every target format, on random rows);
* the template renderer: random template sources (random text, and fragments of Jinja syntax including
  sandbox escapes) through ``load_template(prompt=..., completion=...)``, rendered on random records; and
  random data values (Jinja syntax included) inserted verbatim;
* the score-file readers (``load_predictions``, ``load_references``, ``score_files``) on random files,
  and ``score_pairs`` on random predictions and references.

``EXAMPLES`` collects how many examples each test ran; ``test_zz_examples_report`` prints the total
(run with ``-s`` to see it).
"""

from __future__ import annotations

import copy
import json
import shutil
import string
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from tunespec.compiler.convert import CONVERT_FORMATS, convert_row
from tunespec.compiler.files import read_table
from tunespec.compiler.row_conversion import Dropped, RowConverter, convert_rows
from tunespec.errors import TunespecError
from tunespec.format_table import FORMATS, TAG_KEYS
from tunespec.records import Record
from tunespec.runtime.rouge import score_pairs
from tunespec.runtime.scorefiles import load_predictions, load_references, score_files
from tunespec.spec.loader import load_spec
from tunespec.templating.templates import load_template

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
EXAMPLE_SPECS = sorted(SPECS.glob("*.yaml")) + sorted((SPECS / "examples").glob("*.yaml"))

EXAMPLES: Counter = Counter()  # test name -> examples run



def fuzz(n: int):
    """At most n examples, no deadline (a first call may import a module), no example database on disk."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _count(name: str) -> None:
    EXAMPLES[name] += 1


def _must_be_user_error(fn, *args, **kwargs):
    """Call fn; a TunespecError is fine, anything else fails the example (hypothesis shrinks it)."""
    try:
        return fn(*args, **kwargs)
    except TunespecError as e:
        assert e.problems, "a TunespecError without problems"
        for p in e.problems:
            p.render()  # every problem renders
        return None


@pytest.fixture(scope="module")
def workdir():
    """A private copy of specs/ (so `extends` and relative paths resolve) to write fuzzed files into."""
    d = Path(tempfile.mkdtemp(prefix="tunespec-fuzz-"))
    shutil.copytree(SPECS, d / "specs")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- values

_TEXT = st.text(max_size=30)
_SPECIAL_TEXT = st.sampled_from(["", " ", "\n", "null", "~", "yes", "no", "1e-4", "0x10", ".inf", "-", "{{ x }}",
                                 "a.b", "=", "é", "\ufeff", "\x00", "'", '"', "[", "{", "*", "&a", "!!str", "%"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.integers(),
                     st.floats(allow_nan=True, allow_infinity=True), _TEXT, _SPECIAL_TEXT)


def _values(keys=_TEXT, max_leaves: int = 12):
    return st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(keys, inner, max_size=4)),
                        max_leaves=max_leaves)


# --------------------------------------------------------------------------- the spec loader

def _spec_keys() -> list[str]:
    """Every key name the spec language knows, from the JSON Schema."""
    from tunespec.spec import json_schema

    names: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            names.update(k for k in (node.get("properties") or {}))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(json_schema())
    return sorted(names)


SPEC_KEYS = _spec_keys()
_KEYS = st.one_of(st.sampled_from(SPEC_KEYS), _TEXT)
_ANY_KEYS = st.one_of(_KEYS, st.integers(), st.booleans(), st.none(), st.floats(allow_nan=False))


def _dump(doc) -> str:
    import io

    y = YAML(typ="safe", pure=True)
    y.allow_unicode = True
    buf = io.StringIO()
    y.dump(doc, buf)
    return buf.getvalue()


def _load_text(workdir: Path, text: str | bytes, overrides=()):
    path = workdir / "specs" / "fuzzed.yaml"
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    return _must_be_user_error(load_spec, path, list(overrides))


_YAML_ALPHABET = string.ascii_letters + string.digits + " \n\t:-[]{}#&*!|>'\",.?%@`=~_/\\"


@fuzz(300)
@given(text=st.one_of(st.text(alphabet=_YAML_ALPHABET, max_size=200), st.text(max_size=120),
                      st.binary(max_size=80)))
# found by this test in CI (2026-12-08): a standard tag on a value it does not fit crashed ruamel's constructor
@example(text="!!bool")
@example(text="a: !!int 1e5\n")
@example(text="a: !!set 3\n")
def test_spec_loader_random_text(workdir, text):
    _count("spec loader: random text")
    _load_text(workdir, text)


@fuzz(300)
@given(doc=st.dictionaries(_ANY_KEYS, _values(_ANY_KEYS), max_size=6))
def test_spec_loader_random_documents(workdir, doc):
    _count("spec loader: random documents")
    _load_text(workdir, _dump(doc))


def _paths(node, prefix=()):
    """Every path to a value of a plain document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


def _mutate(doc, data) -> object:
    """One random mutation of a plain document: delete, retype, rename, nest, or wrap a value."""
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return data.draw(_values(_KEYS))
    path = data.draw(st.sampled_from(paths))
    parent, key = _get(doc, path[:-1]), path[-1]
    action = data.draw(st.sampled_from(["delete", "replace", "rename", "nest", "wrap", "swap_type", "string"]))
    if action == "delete":
        del parent[key]
    elif action == "replace":
        parent[key] = data.draw(_values(_KEYS, max_leaves=6))
    elif action == "rename" and isinstance(parent, dict):
        parent[data.draw(_ANY_KEYS)] = parent.pop(key)
    elif action == "nest":
        parent[key] = {data.draw(_KEYS): parent[key]}
    elif action == "wrap":
        parent[key] = [parent[key]]
    elif action == "swap_type":
        value = parent[key]
        parent[key] = ({"x": value} if isinstance(value, list) else list(value.values()) if isinstance(value, dict)
                       else str(value) if not isinstance(value, str) else data.draw(st.integers() | st.floats()))
    else:
        parent[key] = data.draw(st.one_of(_TEXT, _SPECIAL_TEXT))
    return doc


_EXAMPLE_DOCS = {p.relative_to(SPECS).as_posix(): YAML(typ="safe", pure=True).load(p.read_text(encoding="utf-8"))
                 for p in EXAMPLE_SPECS}


@fuzz(400)
@given(name=st.sampled_from(sorted(_EXAMPLE_DOCS)), data=st.data())
def test_spec_loader_mutated_examples(workdir, name, data):
    _count("spec loader: mutated example specs")
    doc = copy.deepcopy(_EXAMPLE_DOCS[name])
    for _ in range(data.draw(st.integers(1, 4))):
        doc = _mutate(doc, data)
    target = workdir / "specs" / name
    target.write_text(_dump(doc), encoding="utf-8", errors="surrogatepass")
    try:
        _must_be_user_error(load_spec, target)
    finally:
        shutil.copyfile(SPECS / name, target)


_SET_PATHS = st.one_of(st.sampled_from(["training.max_steps", "data.sources.0.limit", "model", "name", "adapter.r",
                                        "data.sources", "training", "x.y.z", "data.sources.9.path", "", ".",
                                        "data..format", "adapter.target_modules.0", "extends"]), _TEXT)


@fuzz(300)
@given(args=st.lists(st.one_of(st.builds(lambda p, v: f"{p}={v}", _SET_PATHS,
                                         st.one_of(_TEXT, _SPECIAL_TEXT, st.builds(_dump, _values()))),
                               _TEXT), min_size=1, max_size=3))
def test_spec_loader_random_set_arguments(workdir, args):
    _count("spec loader: random --set arguments")
    _must_be_user_error(load_spec, workdir / "specs" / "quickstart.yaml", args)


# --------------------------------------------------------------------------- data files and format converters

@fuzz(250)
@given(suffix=st.sampled_from([".json", ".jsonl", ".csv", ".parquet", ".ndjson"]),
       content=st.one_of(st.binary(max_size=200),
                         st.text(alphabet='{}[]",:0123456789.-eE \n\tabnulltruefalse\\', max_size=120)
                         .map(lambda s: s.encode("utf-8")),
                         st.lists(_values(), max_size=4).map(lambda v: json.dumps(v).encode("utf-8"))))
def test_read_table_random_files(workdir, suffix, content):
    _count("data files: random bytes")
    path = workdir / f"data{suffix}"
    path.write_bytes(content)
    _must_be_user_error(read_table, path)


def _turn(keys):
    return st.dictionaries(st.one_of(st.sampled_from(keys), _TEXT),
                           st.one_of(st.sampled_from(["human", "gpt", "system", "user", "assistant", "tool",
                                                      "function_call", "observation", "alien"]), _values()),
                           max_size=4)


def _rows_for(fmt: str):
    info = FORMATS[fmt]
    columns = list(info.required + info.optional) + ["id", "fname", "meta"]
    turn = _turn(["from", "value", "role", "content", "tool_calls"])
    value = st.one_of(_values(), st.lists(turn, max_size=5),
                      st.lists(st.lists(st.one_of(_TEXT, _SCALARS), max_size=3), max_size=3))
    row = st.dictionaries(st.one_of(st.sampled_from(columns), _TEXT), value, max_size=len(columns) + 1)
    return st.lists(st.one_of(row, _values()), max_size=6)


_FORMAT_CASES = st.sampled_from(sorted(FORMATS)).flatmap(
    lambda fmt: st.tuples(st.just(fmt), _rows_for(fmt),
                          st.one_of(st.none(), st.dictionaries(
                              st.sampled_from(list(FORMATS[fmt].map_keys) + list(TAG_KEYS) + ["bogus"]),
                              st.one_of(_TEXT, st.sampled_from(list(FORMATS[fmt].required) + ["id"])), max_size=2)),
                          st.one_of(st.none(), st.sampled_from(["id", "fname", "missing"]))))


@fuzz(400)
@given(case=_FORMAT_CASES)
def test_convert_rows_random_rows(case):
    _count("format converters: convert_rows")
    fmt, rows, column_map, id_column = case
    out = _must_be_user_error(convert_rows, fmt, rows, source="fuzz", column_map=column_map, id_column=id_column)
    if out is not None:
        records, drops = out
        assert len(records) + sum(drops.values()) == len(rows)  # nothing silently lost
        for r in records:
            assert isinstance(r, Record) and (r.fields is None) != (r.messages is None)


@fuzz(250)
@given(case=st.sampled_from([f for f in CONVERT_FORMATS]).flatmap(
    lambda fmt: st.tuples(st.just(fmt), _rows_for(fmt))), to_fmt=st.sampled_from(CONVERT_FORMATS))
def test_convert_row_random_rows(case, to_fmt):
    _count("format converters: convert_row (tunespec convert)")
    fmt, rows = case
    converter = RowConverter(fmt, source="fuzz")
    try:
        converter.check_columns(rows)
    except TunespecError:
        return
    for index, row in enumerate(rows):
        try:
            out = _must_be_user_error(convert_row, converter, row, index, to_fmt)
        except Dropped:
            continue
        if out is not None:
            json.dumps(out, default=str)


# --------------------------------------------------------------------------- templates

_JINJA_PIECES = st.sampled_from([
    "{{ instruction }}", "{{ input }}", "{{ output }}", "{{ dialogue }}", "{{ summary }}", "{{ system }}",
    "{{ nope }}", "{{ ", " }}", "{%", "%}", "{% if input %}", "{% else %}", "{% endif %}", "{% for c in output %}",
    "{% endfor %}", "{{ output | upper }}", "{{ output | nosuchfilter }}", "{{ 1/0 }}", "{{ output[0] }}",
    "{{ output[99] }}", "{{ input | int }}", "{{ ''.__class__ }}", "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}", "{{ self.__dict__ }}", "{{ output.__class__ }}", "{{ range(10**6) }}",
    "{{ lipsum.__globals__ }}", "{{ joiner.__init__.__globals__.os }}", "{{ namespace.__init__ }}",
    "{{ 'x' * 10**9 }}", "{{ 2 ** 10 ** 8 }}", "{{ output.format(output) }}", "{{ '%s'|format(output) }}",
    "{% set x = output %}{{ x }}", "{% block inner %}{% endblock %}", "{% raw %}", "{% endraw %}", "{# c #}",
    "{{ output|attr('__class__') }}", "{{ (output ~ input)|length }}", "{{ loop.index }}", "{% macro m() %}",
    "{% endmacro %}", "{{ m() }}", "{{ raise_exception('x') }}", "{% include 'x' %}", "{% import 'x' as y %}",
    "{{ output.split()|join(' ') }}", "{{ input.__len__() }}", "{{ tools }}", "\n", "text", "é", "}}{{",
])
_TEMPLATE_SOURCE = st.one_of(st.text(max_size=40), st.lists(st.one_of(_JINJA_PIECES, st.text(max_size=8)),
                                                             max_size=6).map("".join))
_FIELD_VALUE = st.one_of(st.text(max_size=30), st.sampled_from(["{{ 7*7 }}", "{% for x in range(3) %}x{% endfor %}",
                                                                  "{{ ''.__class__ }}", "", "\x00", "}}"]))


@fuzz(600)
@given(prompt=_TEMPLATE_SOURCE, completion=_TEMPLATE_SOURCE, stop=st.one_of(st.none(), _TEMPLATE_SOURCE),
       fmt=st.sampled_from([f for f, i in FORMATS.items() if i.kind == "fields"]), data=st.data())
def test_template_random_sources(prompt, completion, stop, fmt, data):
    _count("templates: random sources rendered on random records")
    fields = set(FORMATS[fmt].text_fields)
    template = _must_be_user_error(load_template, prompt=prompt, completion=completion, stop=stop, fields=fields)
    if template is None:
        return
    for i in range(data.draw(st.integers(1, 3))):
        values = {f: data.draw(_FIELD_VALUE) for f in fields}
        record = Record(id=f"r{i}", source=f"fuzz#{i}", fields=values)
        _must_be_user_error(template.render, record, fmt)


@fuzz(200)
@given(values=st.fixed_dictionaries({"instruction": _FIELD_VALUE, "input": _FIELD_VALUE, "output": _FIELD_VALUE}))
def test_template_inserts_data_values_verbatim(values):
    """A value is data, never template source: `{{ 7*7 }}` in a row stays `{{ 7*7 }}`."""
    _count("templates: data values inserted verbatim")
    template = load_template(prompt="{{ instruction }}|{{ input }}", completion="{{ output }}",
                             fields={"instruction", "input", "output"})
    prompt, completion = template.render(Record(id="r", source="fuzz#0", fields=values), "alpaca")
    assert prompt.text == values["instruction"] + "|" + values["input"]
    assert completion.text == values["output"]


# --------------------------------------------------------------------------- score files and ROUGE

_SCORE_ROW = st.one_of(
    st.fixed_dictionaries({"id": st.one_of(st.integers(0, 5), st.sampled_from(["1", "2", "", " "]), _SCALARS),
                           "prediction": st.one_of(_TEXT, _SCALARS)}),
    st.fixed_dictionaries({"id": st.one_of(st.integers(0, 5), _SCALARS),
                           "references": st.one_of(st.lists(_TEXT, max_size=3), _values())}),
    st.fixed_dictionaries({"id": st.integers(0, 5), "reference": st.one_of(_TEXT, _SCALARS),
                           "summary": st.one_of(_TEXT, st.lists(_TEXT, max_size=2), _SCALARS)}),
    _values(),
)
_SCORE_LINE = st.one_of(_SCORE_ROW.map(lambda r: json.dumps(r).encode("utf-8")), st.binary(max_size=30),
                        st.sampled_from([b"", b"\xef\xbb\xbf{}", b"[", b"9" * 5000, b"[" * 5000, b"NaN",
                                         b'{"id": 1, "prediction": "a"}', b'{"id": 1, "references": ["a"]}']))
_SCORE_FILE = st.lists(_SCORE_LINE, max_size=6).map(b"\n".join)


@fuzz(300)
@given(preds=_SCORE_FILE, refs=_SCORE_FILE,
       fields=st.one_of(st.none(), st.lists(st.sampled_from(["summary", "reference", "nope", "id"]), max_size=2)),
       multi_ref=st.sampled_from(["mean", "max"]))
def test_score_files_random(workdir, preds, refs, fields, multi_ref):
    _count("score files: random prediction/reference files")
    p, r = workdir / "preds.jsonl", workdir / "refs.jsonl"
    p.write_bytes(preds)
    r.write_bytes(refs)
    _must_be_user_error(load_predictions, p)
    _must_be_user_error(load_references, r, fields)
    _must_be_user_error(score_files, p, r, fields, multi_ref, n_bootstrap=20)


@fuzz(150)
@given(predictions=st.lists(st.one_of(st.text(max_size=40), _SCALARS), max_size=4),
       references=st.lists(st.one_of(st.lists(st.one_of(st.text(max_size=40), _SCALARS), max_size=3), _TEXT),
                           max_size=4),
       multi_ref=st.one_of(st.sampled_from(["mean", "max"]), _TEXT))
def test_score_pairs_random(predictions, references, multi_ref):
    _count("ROUGE: score_pairs on random inputs")
    _must_be_user_error(score_pairs, predictions, references, multi_ref=multi_ref, n_bootstrap=10)


def test_zz_examples_report(capsys):
    """The number of examples each fuzz test ran (printed; run with -s)."""
    total = sum(EXAMPLES.values())
    with capsys.disabled():
        print(f"\nfuzz examples run: {total}")
        for name, n in sorted(EXAMPLES.items()):
            print(f"  {n:5d}  {name}")
    assert total > 0
