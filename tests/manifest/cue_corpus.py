"""The corpus of the differential test against real CUE (test_cue_diff.py).

Every case is a CUE file. ``schema`` cases are manifests, evaluated as
``capos-sched export --json M`` and as ``cue export schema/manifest.cue M``;
the others are standalone CUE files, evaluated by the same evaluator without
the schema (``cue export M``). For each case the two tools must agree:

- both accept it and export the same data (object key order aside; numbers
  compared as the text they print);
- or both reject it;
- or capos-sched refuses valid CUE saying it is "not supported in
  capos-sched manifests", or by one of its documented model checks
  (``restriction`` is then a part of the expected message).

The cases follow docs/manifests.md feature by feature, then the mismatch
classes of issue 10.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Case:
    name: str
    text: str
    schema: bool = False
    restriction: str = ""
    """For valid CUE that capos-sched refuses on purpose (a documented model
    check): a part of the message it must give."""


def _data(name: str, text: str, restriction: str = "") -> Case:
    return Case(name, text, schema=False, restriction=restriction)


def _manifest(name: str, text: str, restriction: str = "") -> Case:
    return Case(name, text, schema=True, restriction=restriction)


_BASE = 'machine: cpus: 1\nprocesses: p: threads: t: workload: kind: "spin"\n'

CASES: tuple[Case, ...] = (
    # -- literals and numbers ----------------------------------------------
    _data("ints", "a: 0\nb: -7\nc: 0xBad_Face\nd: 0o755\ne: 0b0101\nf: 1_000_000\n"),
    _data("big-int", "a: 170_141_183_460_469_231_731_687_303_715_884_105_727\n"),
    _data("negative-big-int", "a: -9_223_372_036_854_775_809\n"),
    _data(
        "floats",
        "a: 1.0\nb: 1e6\nc: .25\nd: 1E-7\ne: 100.0e-2\nf: 1.50\ng: 5e3\nh: 0.0\n"
        "i: 2.5e1\nj: -1.5\nk: 12345678901234567890.5\n",
    ),
    _data("float-exact", "x: 0.1000000000000000055511151231257827\n"),
    _data("float-huge", "x: 1E+400\ny: 1e-400\nz: -1E+400\n"),
    _data("float-negative-zero", "x: -0.0\ny: -0\n"),
    _data("float-in-list", "x: [0.5, 1e10, 3.14159265358979323846264338327950288]\n"),
    _data("strings", 'a: "日本語"\nb: "\\u65e5本\\U00008a9e"\nc: "a\\tb\\"c\\\\d\\/"\nd: ""\n'),
    _data("string-escapes", 'a: "\\a\\b\\f\\n\\r\\t\\v"\n'),
    _data("bool-null", "a: true\nb: false\nc: null\n"),
    _data("top", "a: _ & 5\nb: 5 & _\n"),
    _data("top-alone", "a: _\n"),
    _data("bottom", "a: _|_\n"),
    _data("bottom-in-list", "a: [1, _|_]\n"),
    _data("unterminated-string", 'a: "abc\n'),
    _data("bad-escape", 'a: "\\q"\n'),
    _data("surrogate-escape", 'a: "\\ud800"\n'),
    # -- structs, labels, commas, comments ---------------------------------
    _data("shorthand", "a: b: c: 1\na: b: d: 2\n"),
    _data("quoted-labels", '"a-b": 1\n"c d": {"e.f": 2}\n'),
    _data("keyword-labels", '"package": 1\nimport: 2\nfor: 3\ntrue: 4\nif: 5\n'),
    _data("commas", "a: 1, b: [1, 2]\nc: {d: 1, e: 2,}\n"),
    _data("newline-commas", "a: 1,\nb: [\n\t1,\n\t2,\n]\nc: *1 |\n\t2\n"),
    _data("comments", "// top\na: 1 // one\nb: [1, // first\n\t2]\n"),
    _data("empty-file", ""),
    _data("only-comment", "// nothing\n"),
    _data("package-clause", "package capos\na: 1\n"),
    _data("nested-empty", "a: {}\nb: {c: {}}\nd: []\n"),
    _data("optional-field", "a: {b?: int, c: 1}\n"),
    _data("optional-set", "#D: {a?: int}\nx: #D & {a: 3}\n"),
    _data("optional-conflict-in-definition", "#D: {a?: 1 & 2}\nx: 1\n"),
    _data("field-merge", "a: {x: 1}\nb: a\na: {y: 2}\n"),
    _data("duplicate-field", "a: 1\na: 1\nb: {c: int, c: 2}\n"),
    # -- unification --------------------------------------------------------
    _data("unify-structs", "x: {a: 1} & {b: 2}\ny: {a: 1, b: int} & {b: 2}\n"),
    _data("unify-conflict", "x: {a: 1} & {a: 2}\n"),
    _data("unify-int-float", "x: 1 & 1.0\n"),
    _data("unify-type-mismatch", 'x: int & "a"\n'),
    _data("unify-null", "x: null & 8\n"),
    _data("unify-bools", "x: true & false\n"),
    _data("unify-same-bool", "x: true & bool\n"),
    _data("unify-number", "x: number & 1\ny: number & 1.5\n"),
    _data("unify-float-type", "x: float & 1.5\n"),
    _data("unify-int-type-float", "x: float & 1\n"),
    _data("unify-string-type", 'x: string & "s"\n'),
    _data("unify-struct-with-scalar", "x: {a: 1} & 1\n"),
    _data("unify-list-with-struct", "x: [1] & {a: 1}\n"),
    # -- bounds ---------------------------------------------------------------
    _data("bounds", "x: >=0 & <=7 & >=3 & <=10 & 3\ny: 2 & >=2 & <=5\n"),
    _data("bound-violated", "x: >=0 & <=7 & >=3 & <=10 & 8\n"),
    _data("bound-float-value", "x: 2.5 & >=1 & <=5\ny: 2.5 & float & >1 & <5\n"),
    _data("bound-float-int", "x: 2.5 & int & >1 & <5\n"),
    _data("bound-exclusive", "x: >1 & 1\n"),
    _data("bound-not-equal", "x: !=null & 1\ny: !=2 & 3\n"),
    _data("bound-not-equal-violated", "x: !=2 & 2\n"),
    _data("bound-not-equal-string", 'x: string & !="" & "a"\n'),
    _data("bound-not-equal-empty", 'x: string & !="" & ""\n'),
    _data("bound-incomplete", "x: int & >=1\n"),
    _data("bound-empty-range", "x: >5 & <3\n"),
    _data("bound-single-int", "x: int & >1 & <3\n"),
    _data("bound-single-int-inclusive", "x: int & >=4 & <=4\n"),
    _data("bound-single-number", "x: >=1 & <=1\n"),
    _data("bound-open-number", "x: >1 & <3\n"),
    _data("bound-two-ints", "x: int & >1 & <4\n"),
    _data("bound-int-excluded", "x: int & >=1 & <=3 & !=2 & >1\n"),
    _data("bound-single-after-exclusion", "x: int & >=1 & <=2 & !=1\n"),
    _data("sized-types", "a: uint8 & 255\nb: int8 & -128\nc: uint & 0\nd: rune & 0x10FFFF\n"),
    _data("sized-type-violated", "a: uint8 & 256\n"),
    _data("bound-float-limit", "x: >=1.5 & 2\n"),
    _data("bound-string-limit", 'x: >="a" & "b"\n'),
    # -- disjunctions and defaults -------------------------------------------
    _data("default-simple", 'a: *"tcp" | "udp"\nb: string | *"foo"\nc: *1 | 2 | 3\n'),
    _data("default-nested", "a: (*1|2|3) | *(1|*2|3)\n"),
    _data("default-unify", 'a: (*"tcp"|"udp") & ("udp"|*"tcp")\nb: (*"tcp"|"udp") & "tcp"\n'),
    _data("default-bool", "a: (*true | false) & bool\n"),
    _data("default-type", "a: float | *1\n"),
    _data("default-bounds", "a: (* >=5 | int) & (* <=5 | int)\n"),
    _data("default-struct", "a: {a: 1} | *{b: 1}\n"),
    _data("default-ambiguous", "a: (*1|2|3) | (1|*2|3)\n"),
    _data("default-cancel", "a: (*1|2) & (1|*2)\n"),
    _data("default-two-marked", "a: *{a: 1} | *{b: 1}\n"),
    _data("disjunction-no-default", 'a: "tcp" | "udp"\n'),
    _data("disjunction-eliminated", 'a: ("a" | "b") & "b"\n'),
    _data("disjunction-none", 'a: ("a" | "b") & "c"\n'),
    _data("disjunction-equal-structs", "x: {a: 1} | {a: 1}\n"),
    _data("disjunction-equal-lists", "x: [1, 2] | [1, 2]\n"),
    _data("disjunction-equal-after-unify", "x: ({a: int} | {a: 1}) & {a: 1}\n"),
    _data("disjunction-equal-atoms", "x: 1 | 1\ny: (1 | 2) & (1 | 3)\n"),
    _data("disjunction-struct-select", "x: ({kind: 1, a: 1} | {kind: 2, b: 1}) & {kind: 2}\n"),
    _data("default-kept-through-reference", "a: *1 | int\nb: a\n"),
    _data("default-of-a-reference", "d: 1\nx: *d | 5\n"),
    # -- definitions, hidden fields, references -------------------------------
    _data("definition-closed", "#A: {b: {c: int}}\nx: #A & {b: {c: 1, d: 2}}\n"),
    _data(
        "definition-merge",
        '#S: {sub: f: string}\n#S: {sub: e?: bool}\nok: #S & {sub: {f: "x", e: true}}\n',
    ),
    _data("definition-pattern", "#M: {[string]: int}\nx: #M & {anything: 1}\n"),
    _data("definition-not-exported", "#D: {a: int}\n_h: 1\nx: {y?: int, z: _h}\n"),
    _data("hidden-open", "_a: {b: int}\nx: _a & {b: 1, c: 2}\n"),
    _data("hidden-definition", "_#D: {a: 1}\nx: _#D\n"),
    _data("reference-top-level", "a: {x: 1}\nb: a\n"),
    _data("reference-forward", "b: a.x\na: {x: 1}\n"),
    _data("selector-definition", '#T: {x: int, y: 3, "x-y": 4}\nb: #T.y\nd: #T."x-y"\n'),
    _data("selector-missing", "#T: {x: 1}\nb: #T.nope\n"),
    _data("selector-on-scalar", "a: 1\nb: a.x\n"),
    _data("quoted-label-no-identifier", '"s": 3\nd: s\n'),
    _data("reference-not-found", "x: nope\n"),
    _data("reference-enclosing-struct", "x: {a: 1, b: a}\n"),
    _data("reference-nested-in-definition", "#D: {a: int, b: a}\nx: #D & {a: 1}\n"),
    _data("predeclared-unsupported", "x: len([1])\n"),
    _data("pattern-top-level", '[string]: int\na: 1\nb: "x"\n'),
    _data("pattern-all", "x: {[string]: int}\nx: {a: 1, b: 2}\n"),
    _data("pattern-violated", "intMap: [string]: int\nintMap: {t1: 43, t2: 2.4}\n"),
    _data("pattern-disjunction", 'x: {["a" | "b"]: int}\nx: {a: 1, c: "s"}\n'),
    _data("pattern-not-equal", 'x: {[!="a"]: int}\nx: {a: "s", b: 1}\n'),
    _data("pattern-closed", '#D: {["a" | "b"]: int}\nx: #D & {a: 1, c: 2}\n'),
    # -- lists ------------------------------------------------------------------
    _data("lists", "x: [1, 2, ...int] & [1, 2, 3]\ny: [...string]\nz: [1, ...]\n"),
    _data("list-type-error", 'x: [...int] & [1, "a"]\n'),
    _data("list-length", "x: [1, 2] & [1, 2, 3]\n"),
    _data("list-nested", 'x: [[1], {a: "b"}, []]\n'),
    _data("list-incomplete", "x: [int]\n"),
    # -- concreteness -------------------------------------------------------------
    _data("incomplete-type", "x: int\n"),
    _data("incomplete-nested", "x: {a: string}\n"),
    _data("incomplete-hidden-ok", "_x: int\n#y: string\nz: 1\n"),
    # -- outside the subset (valid CUE refused, or invalid) -------------------------
    _data("arithmetic", "a: 1 + 2\n"),
    _data("comparison", "a: 1 == 1\n"),
    _data("interpolation", 'a: "x\\(1)"\n'),
    _data("multi-line-string", 'a: """\n\tx\n\t"""\n'),
    _data("raw-string", 'a: #"x"#\n'),
    _data("bytes-literal", "a: 'x'\n"),
    _data("multiplier", "a: 1Ki\n"),
    _data("embedding", "#B: {a: 1}\nx: {#B, b: 2}\n"),
    _data("struct-ellipsis", "x: {a: 1, ...}\n"),
    _data("comprehension", "x: [for v in [1] {v}]\n"),
    _data("if-comprehension", "x: {if true {a: 1}}\n"),
    _data("let", "let y = 1\nx: y\n"),
    _data("alias", "X=a: 1\nb: X\n"),
    _data("dynamic-label", '("a"): 1\n'),
    _data("required-field", "#D: {a!: int}\nx: #D & {a: 1}\n"),
    _data("regexp", 'a: =~"x" & "x"\n'),
    _data("index", "a: [1, 2][0]\n"),
    _data("import", 'import "strings"\na: 1\n'),
    _data("attribute", "a: 1 @go(A)\n"),
    _data("unary-not", "a: !true\n"),
    _data("bytes-type", "x: bytes\n"),
    _data("other-package", "package other\na: 1\n", restriction="belong to package"),
    # -- syntax errors --------------------------------------------------------------
    _data("syntax-double-comma", "cpus: 2,,\nb: 1\n"),
    _data("syntax-double-comma-nested", "machine: {\n\tcpus: 2,,\n}\n"),
    _data("syntax-newline-before-or", "a: 1\n| 2\n"),
    _data("syntax-newline-before-and", "a: 1\nb: 2\n\t& 3\n"),
    _data("syntax-block-comment", "a: 1\n/* block */\nb: 2\n"),
    _data("syntax-block-comment-inline", "a: 1 /* x */\n"),
    _data("syntax-unclosed-brace", "a: {b: 1\n"),
    _data("syntax-missing-colon", "a 1\n"),
    _data("syntax-missing-value", "a:\n"),
    _data("syntax-stray-close", "a: 1}\n"),
    _data("syntax-bad-char", "a: 1 ~ 2\n"),
    # -- mismatch classes of issue 10 --------------------------------------------------
    # Errors inside a disjunction are errors, not failing alternatives.
    _data("disjunction-enclosing-reference", "burst: 1\nw: {burst: 2, count: *burst | 5}\n"),
    _data("disjunction-reference-not-found", 'policy: _nope | "fifo"\n'),
    _data("disjunction-reference-not-found-default", 'policy: *_nope | "fifo"\n'),
    _data("disjunction-bytes", 'data: bytes | "x"\n'),
    _data("disjunction-bytes-default", 'data: *"x" | bytes\n'),
    _data("disjunction-unsupported-in-struct", "x: {a: len([])} | {b: 1}\n"),
    _data("disjunction-call", "x: *len([1]) | 5\n"),
    # Unused hidden fields and definitions are evaluated.
    _data("unused-hidden-conflict", "_a: 1 & 2\nx: 1\n"),
    _data("unused-hidden-struct-conflict", "_a: {b: 1} & {b: 2}\nx: 1\n"),
    _data("unused-definition-conflict", "#D: {a: 1 & 2}\nx: 1\n"),
    _data("unused-hidden-bottom", "_h: _|_\nx: 1\n"),
    _data("unused-definition-undefined", "#D: {a: _nope}\nx: 1\n"),
    _data("unused-hidden-structural-cycle", "_x: b: _x\ny: 1\n"),
    _data("unused-nested-hidden-conflict", "x: {_h: 1 & 2, a: 1}\n"),
    _data("unused-hidden-incomplete-ok", "_h: {a: int}\nx: 1\n"),
    _data("unused-definition-closed", "#D: {a: int}\n_x: #D & {b: 1}\ny: 1\n"),
    # False reference cycles.
    _data("sibling-subtree-reference", "p: a: t: 1\np: b: t: p.a.t\n"),
    _data(
        "recursive-definition-optional", "#L: {v: int, next?: #L}\nx: #L & {v: 1, next: {v: 2}}\n"
    ),
    _data("recursive-definition-unused", "#L: {v: int, next?: #L}\nx: 1\n"),
    _data(
        "recursive-definition-too-deep", "#L: {v: int, next?: #L}\nx: #L & {v: 1, next: {w: 2}}\n"
    ),
    _data("resolvable-cycle-hidden", "_a: _b & 2\n_b: _a\nx: _a\n"),
    _data("resolvable-cycle", "a: b & 2\nb: a\n"),
    _data("resolvable-cycle-three", "a: b\nb: c & {x: 1}\nc: a\n"),
    _data("self-reference", "a: a & 1\n"),
    _data("unresolved-cycle", "a: b\nb: a\n"),
    _data("structural-cycle", "a: b: a\n"),
    _data("structural-cycle-unify", "a: b: a & {c: 1}\n"),
    _data("top-pattern-self", "[string]: x\nx: int\n"),
    _data("top-pattern-cycle", "[string]: x\na: 1\nx: int\n"),
    # Other valid CUE that was refused.
    _data("int-bounds-resolve", "x: int & >1 & <3\n"),
    # -- more edge cases: references, defaults, laziness ----------------------------------
    _data("bottom-alternative-dropped", "x: _|_ | 1\ny: *_|_ | 1\n"),
    _data("bottom-alternative-ambiguous", "x: 1 | _|_ | 2\n"),
    _data("null-default", "x: null | *1\ny: *null | 1\n"),
    _data("dollar-identifier", "$a: 1\nb: $a\n"),
    _data("unicode-label", '"é": 1\n"日本": {"語": 2}\n'),
    _data("definition-two-declarations-conflict", "#D: a: 1\n#D: a: 2\nx: 1\n"),
    _data("definition-closed-across-declarations", "#D: {a: int}\nx: #D\nx: b: 1\n"),
    _data("definition-referencing-definition", "#A: {a: int}\n#B: #A & {a: 1}\nx: #B\n"),
    _data("definition-extending-closed", "#A: {a: int}\n#B: #A & {b: 1}\nx: 1\n"),
    _data("hidden-referencing-regular", "x: 3\n_h: x\ny: _h\n"),
    _data("selector-hidden-struct", "_s: {a: 1, b: {c: 2}}\nx: _s.a\ny: _s.b.c\n"),
    _data("selector-optional", "#D: {a?: int}\nx: #D.a\n"),
    _data("selector-default", "#T: {a: *1 | int}\nx: #T.a\n"),
    _data("selector-disjunction-default", "_s: *{a: 1} | {a: 2}\nx: _s.a\n"),
    _data("bound-from-reference", "#min: 2\nx: >=#min & 3\n"),
    _data("bound-from-reference-violated", "#min: 2\nx: >=#min & 1\n"),
    _data("bound-from-default", "#m: *2 | 3\nx: >=#m & 2\n"),
    _data("bound-float-single", "x: float & >=1 & <=1\n"),
    _data("bound-number-single-zero", "x: >=0 & <=0\n"),
    _data("bound-sized-single", "x: uint8 & >=255\ny: int8 & <-127\n"),
    _data("bound-negative-spaced", "x: int8 & < -127\n"),
    _data("default-both-sides", "a: (*1024 | int) & (*10000 | 1)\n"),
    _data("default-both-sides-three", "b: (*1 | 2 | 3) & (*2 | 3)\n"),
    _data("default-both-sides-types", "c: (*1 | int) & (*2 | int)\n"),
    _data("default-both-sides-swapped", "d: (*1 | 2) & (*2 | 1)\n"),
    _data("default-both-sides-strings", 'e: (*"a" | "b" | "c") & ("b" | *"c" | "a")\n'),
    _data("default-one-side", "f: (*1 | 2) & (1 | 2)\ng: (*1 | 2) & 2\n"),
    _data("default-same", "h: (*1 | 2) & (*1 | 2)\n"),
    _data("bound-two-exclusions", "x: !=1 & !=2 & int\n"),
    _data("list-of-defaults", "x: [...{a: *1 | int}] & [{}, {a: 2}]\n"),
    _data("list-of-definitions", "#D: {a: int}\nx: [...#D] & [{a: 1}, {a: 2, b: 3}]\n"),
    _data("list-reference", "a: [1, 2]\nb: a\nc: [a, a]\n"),
    _data("struct-unify-superset", "x: {a: 1} & {a: 1, b: 2}\n"),
    _data("empty-struct-unify", "x: {} & {a: 1}\ny: {} & {}\n"),
    _data("pattern-with-reference", "#T: int\nx: {[string]: #T}\nx: {a: 1}\n"),
    _data("pattern-reference-violated", '#T: int\nx: {[string]: #T}\nx: {a: "s"}\n'),
    _data("pattern-default", "x: {[string]: *5 | int}\nx: {a: _, b: 2}\n"),
    _data("reference-chain", "a: b\nb: c\nc: d\nd: 4\n"),
    _data("reference-into-disjunction", "a: *{x: 1} | {x: 2}\nb: a.x\n"),
    _data("cycle-through-selector", "a: {x: b.y}\nb: {y: a.x & 1}\n"),
    _data("cycle-unresolved-selector", "a: {x: b.y}\nb: {y: a.x}\n"),
    _data("cycle-with-default", "a: *b | 1\nb: a\n"),
    _data("cycle-in-definition", "#A: {x: #A.y & 1, y: #A.x}\nz: #A.x\n"),
    _data("structural-cycle-list", "a: [a]\n"),
    _data("structural-cycle-definition", "#A: b: #A\nx: 1\n"),
    _data("structural-cycle-two", "a: x: b\nb: y: a\n"),
    _data(
        "recursive-optional-list",
        '#T: {name: string, kids?: [...#T]}\nx: #T & {name: "a", kids: [{name: "b"}]}\n',
    ),
    _data(
        "recursive-disjunction-null", "#L: {v: int, next: #L | null}\nx: #L & {v: 1, next: null}\n"
    ),
    _data("reference-to-optional-definition-field", "#D: {a?: {b: 1}}\nx: #D & {a: {}}\n"),
    _data("hidden-in-disjunction", "x: {_h: 1, a: 1} | {_h: 2, a: 1}\n"),
    _data("unused-hidden-in-list", "_l: [1 & 2]\nx: 1\n"),
    _data("unused-hidden-ambiguous-ok", '_h: "a" | "b"\nx: 1\n'),
    _data("pattern-label-undefined", "x: {[_nope]: int}\nx: a: 1\n"),
    _data("pattern-value-undefined", "x: {[string]: _nope}\n"),
    _data("pattern-value-undefined-nested", "x: {[string]: {a: _nope}}\n"),
    _data("top-pattern-label-undefined", "[_nope]: int\na: 1\n"),
    _data("list-tail-undefined", "x: [..._nope]\n"),
    _data("pattern-value-conflict-unused", "#D: {[string]: 1 & 2}\ny: 1\n"),
    _data("pattern-value-unsupported", "x: {[string]: len([])}\n"),
    _data("optional-undefined", "x: {a?: _nope}\n"),
    _data("unused-definition-disjunction-conflict", "#D: {a: 1} | {a: 2}\n#E: #D & {a: 3}\nx: 1\n"),
    _manifest(
        "schema-definitions-used",
        "machine: #Machine & {cpus: 2}\n"
        'processes: p: threads: t: #Thread & {weight: #defaultWeight, workload: kind: "spin"}\n',
    ),
    _manifest(
        "manifest-pattern-weight",
        "machine: cpus: 1\nprocesses: p: threads: [string]: weight: 5\n"
        'processes: p: threads: {a: workload: kind: "spin"\n'
        '\tb: {weight: 5, workload: kind: "spin"}}\n',
    ),
    _manifest(
        "manifest-pattern-conflict",
        "machine: cpus: 1\nprocesses: p: threads: [string]: weight: 5\n"
        'processes: p: threads: a: {weight: 6, workload: kind: "spin"}\n',
    ),
    _manifest(
        "sibling-workload-reference",
        'machine: cpus: 1\nprocesses: {\n\ta: threads: x: workload: {kind: "spin", total: "1s"}\n'
        "\tb: threads: y: workload: processes.a.threads.x.workload\n}\n",
    ),
    _manifest(
        "machine-from-hidden-struct",
        '_m: {cpus: 2, policy: "fifo"}\nmachine: _m\n' + _BASE.split("\n", 1)[1],
    ),
    _manifest(
        "weight-default-reference", _BASE + "processes: p: threads: t: weight: *#maxWeight | 1\n"
    ),
    _manifest("slice-float-string", _BASE + 'machine: slice: "1.5ms"\n'),
    _manifest(
        "exec-with-reference", _BASE + '_cmd: "python3"\nprocesses: p: exec: [_cmd, "-m", "x"]\n'
    ),
    _manifest(
        "thread-class-disjunction",
        _BASE + 'processes: p: threads: t: class: "batch" | "ipcServer"\n',
    ),
    _manifest("cpus-float", "machine: cpus: 2.0\nprocesses: {}\n"),
    # -- manifests, with the schema ------------------------------------------------------
    _manifest("minimal", _BASE),
    _manifest("minimal-package", "package capos\n" + _BASE),
    _manifest(
        "workloads",
        'machine: {cpus: 2, policy: "fifo", slice: "2ms"}\n'
        "processes: w: threads: {\n"
        '\ta: workload: {kind: "spin", total: "1s"}\n'
        "\tb: workload: {blocks: 4, blockSize: 512}\n"
        '\tc: {class: "interactive", workload: {kind: "sleeper", burst: "200us", period: "5ms"\n'
        "\t\tcount: 3}}\n"
        '\td: {class: "ipcServer", workload: {kind: "ipcServer", endpoint: "e", service: 50000}}\n'
        '\te: {weight: 1, workload: {kind: "ipcClient", endpoint: "e", burst: "1.5ms"}}\n'
        '\tf: {weight: 10000, class: "batch", workload: {kind: "hash", blocks: 1, blockSize: 1\n'
        "\t\trounds: 3}}\n"
        "}\n",
    ),
    _manifest(
        "grants",
        _BASE + 'processes: tuner: {\n\texec: ["python3", "-m", "t"]\n\tgrants: {\n'
        '\t\tpolicy: kind: "schedulingPolicy"\n'
        '\t\t"p/t": {kind: "thread", thread: "p/t"}\n\t}\n}\n',
    ),
    _manifest(
        "split-process",
        _BASE + 'processes: q: threads: a: workload: kind: "spin"\n'
        'processes: q: grants: g: kind: "schedulingPolicy"\n',
    ),
    _manifest(
        "own-definition",
        "machine: cpus: 1\n"
        "#Hog: {\n\tweight: int\n\tclass: string\n"
        '\tworkload: {kind: "spin", total: *"250ms" | "1s"}\n}\n'
        "processes: hogs: threads: {\n\ta: #Hog\n\tb: #Hog & {weight: 512}\n}\n",
    ),
    _manifest(
        "own-pattern",
        "machine: cpus: 1\n"
        'processes: b: threads: [string]: class: "batch"\n'
        'processes: b: threads: {x: workload: kind: "spin"\n'
        "\ty: workload: {blocks: 1, blockSize: 1}}\n",
    ),
    _manifest("hidden-value", "_cpus: 0b10\nmachine: cpus: _cpus\n" + _BASE.split("\n", 1)[1]),
    _manifest("cpus-missing", 'machine: {}\nprocesses: p: threads: t: workload: kind: "spin"\n'),
    _manifest("cpus-too-many", "machine: cpus: 65\nprocesses: {}\n"),
    _manifest("cpus-zero", "machine: cpus: 0\nprocesses: {}\n"),
    _manifest("weight-zero", _BASE + "processes: p: threads: t: weight: 0\n"),
    _manifest("weight-float", _BASE + "processes: p: threads: t: weight: 1.5\n"),
    _manifest(
        "weight-bounds-resolve", _BASE + "processes: p: threads: t: weight: int & >99 & <101\n"
    ),
    _manifest("unknown-class", _BASE + 'processes: p: threads: t: class: "interactiv"\n'),
    _manifest("unknown-field", _BASE + "processes: p: threads: t: wieght: 2\n"),
    _manifest(
        "unknown-kind", 'machine: cpus: 1\nprocesses: p: threads: t: workload: kind: "spinn"\n'
    ),
    _manifest("workload-ambiguous", "machine: cpus: 1\nprocesses: p: threads: t: workload: {}\n"),
    _manifest("workload-missing", "machine: cpus: 1\nprocesses: p: threads: t: {}\n"),
    _manifest(
        "hash-incomplete",
        'machine: cpus: 1\nprocesses: p: threads: t: workload: {kind: "hash", blocks: 1}\n',
    ),
    _manifest("policy-unknown", _BASE + 'machine: policy: "rr"\n', restriction="unknown policy"),
    _manifest(
        "empty-endpoint",
        _BASE
        + 'processes: p: threads: s: workload: {kind: "ipcServer", endpoint: "", service: 1}\n',
    ),
    _manifest("exec-not-strings", _BASE + "processes: p: exec: [1]\n"),
    _manifest("grant-unknown-kind", _BASE + 'processes: p: grants: g: kind: "cpu"\n'),
    _manifest("slice-negative", _BASE + "machine: slice: -1\n"),
    _manifest("slice-zero", _BASE + "machine: slice: 0\n"),
    _manifest("duration-float", _BASE + "machine: slice: 1.5\n"),
    # Model checks beyond CUE (documented restrictions).
    _manifest("extra-top-level", _BASE + "extra: 1\n", restriction="field `extra` not allowed"),
    _manifest("bad-duration", _BASE + 'machine: slice: "4 ms"\n', restriction="invalid duration"),
    _manifest(
        "sub-ns-duration",
        _BASE + 'machine: slice: "0.5ns"\n',
        restriction="whole number of nanoseconds",
    ),
    _manifest(
        "grant-missing-thread",
        _BASE + 'processes: p: grants: g: {kind: "thread", thread: "p/z"}\n',
        restriction="does not exist",
    ),
    _manifest(
        "endpoint-without-server",
        _BASE
        + 'processes: p: threads: c: workload: {kind: "ipcClient", endpoint: "x", burst: 1}\n',
        restriction="has clients but no server",
    ),
    _manifest(
        "duplicate-thread",
        'machine: cpus: 1\nprocesses: p: threads: {\n\tt: workload: kind: "spin"\n'
        '\tt: workload: kind: "spin"\n}\n',
        restriction="duplicate thread",
    ),
    _manifest("exec-empty", _BASE + "processes: p: exec: []\n", restriction="empty list"),
    _manifest(
        "bad-thread-name",
        'machine: cpus: 1\nprocesses: p: threads: "a/b": workload: kind: "spin"\n',
        restriction="is not valid",
    ),
    # Issue 10's classes inside manifests.
    _manifest(
        "sibling-process-reference",
        'machine: cpus: 1\nprocesses: {\n\ta: threads: x: {weight: 7, workload: kind: "spin"}\n'
        '\tb: threads: y: {weight: processes.a.threads.x.weight, workload: kind: "spin"}\n}\n',
    ),
    _manifest(
        "count-default-enclosing",
        "machine: cpus: 1\nburst: 1\nprocesses: p: threads: t: workload: {\n"
        '\tkind: "sleeper", burst: 2, period: 5, count: *burst | 5\n}\n',
    ),
    _manifest("policy-undefined", _BASE + 'machine: policy: _nope | "fifo"\n'),
    _manifest("float-in-manifest", _BASE + "_f: 0.1000000000000000055511151231257827\n"),
    _manifest(
        "equal-struct-alternatives",
        'machine: cpus: 1\n_w: {kind: "spin"}\n'
        'processes: p: threads: t: workload: _w | {kind: "spin"}\n',
    ),
    _manifest("unused-definition-error", _BASE + '#Bad: {kind: "spin" & "hash"}\n'),
)
