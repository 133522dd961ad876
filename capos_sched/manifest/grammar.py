"""The lark grammar of the manifest language and the parser built from it.

The grammar accepts more than capos-sched evaluates (arithmetic, calls,
embeddings, aliases, imports ...) on purpose: a construct outside the subset
then parses, and :mod:`capos_sched.manifest.syntax` reports it as "not
supported" at its exact position instead of a confusing syntax error.

Commas: like Go, CUE lets a newline stand for a comma after a line's final
token when that token can end a value (spec, "Commas"). lark's post-lexer hook
(:class:`CommaInserter`) implements exactly that rule on lark's token stream,
so the grammar itself only ever sees commas.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from lark import Lark, Token
from lark.lark import PostLex

GRAMMAR = r"""
file: [decl ("," decl)* [","]]

?decl: field
     | preamble
     | expr                         -> embedding
     | ELLIPSIS [expr]              -> struct_ellipsis

preamble: IDENT IDENT
        | IDENT STRING

field: label ":" (label ":")* expr

?label: IDENT [label_mark]          -> ident_label
      | STRING [label_mark]         -> string_label
      | "[" expr "]"                -> pattern_label
      | "(" expr ")" [label_mark]   -> dynamic_label
      | IDENT "=" label             -> alias_label
!label_mark: "?" | "!"

?expr: disj
?disj: conj ("|" conj)*
?conj: lor ("&" lor)*
?lor: land
    | lor logic_op land             -> binary
?land: cmp
     | land and_op cmp              -> binary
?cmp: add
    | cmp cmp_op add                -> binary
?add: mul
    | add add_op mul                -> binary
?mul: unary
    | mul mul_op unary              -> binary
!logic_op: "||"
!and_op: "&&"
!cmp_op: "==" | rel_op
!add_op: "+" | "-"
!mul_op: "*" | "/"
!rel_op: ">=" | "<=" | ">" | "<" | "!=" | "=~" | "!~"

?unary: primary
      | "*" unary                   -> default
      | "-" unary                   -> neg
      | "+" unary                   -> unary_plus
      | "!" unary                   -> unary_not
      | rel_op unary                -> bound

?primary: operand
        | primary "." IDENT         -> selector
        | primary "." STRING        -> selector
        | primary "[" expr "]"      -> index
        | primary "(" [expr ("," expr)* [","]] ")" -> call

?operand: literal
        | IDENT                     -> ref
        | "(" expr ")"              -> paren
        | "{" [decl ("," decl)* [","]] "}"   -> struct
        | "[" "]"                            -> list
        | "[" expr ("," expr)* [","] "]"     -> list
        | "[" list_ellipsis [","] "]"        -> list
        | "[" expr ("," expr)* "," list_ellipsis [","] "]"  -> list

list_ellipsis: ELLIPSIS [expr]

literal: INT | FLOAT | STRING | BOTTOM
       | SI_NUMBER | MULTILINE_STRING | RAW_STRING | BYTES
       | UNTERMINATED_STRING | ATTRIBUTE | BAD_CHAR

ELLIPSIS: "..."
BOTTOM.2: "_|_"

IDENT: /(?:_?#)?[A-Za-z_$][A-Za-z0-9_$]*/

INT.1: /0[xX][0-9a-fA-F](?:_?[0-9a-fA-F])*/
   | /0o[0-7](?:_?[0-7])*/
   | /0b[01](?:_?[01])*/
   | /0|[1-9](?:_?[0-9])*/
FLOAT.2: /[0-9](?:_?[0-9])*\.(?:[0-9](?:_?[0-9])*)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?/
     | /[0-9](?:_?[0-9])*[eE][+-]?[0-9](?:_?[0-9])*/
     | /\.[0-9](?:_?[0-9])*(?:[eE][+-]?[0-9](?:_?[0-9])*)?/
SI_NUMBER.3: /(?:[0-9](?:_?[0-9])*(?:\.[0-9](?:_?[0-9])*)?|\.[0-9](?:_?[0-9])*)[KMGTP]i?/

STRING: /"(?:[^"\\\n]|\\[^\n])*"/
UNTERMINATED_STRING.-1: /"(?:[^"\\\n]|\\[^\n])*\\?/
MULTILINE_STRING.1: /"{3}[\s\S]*?"{3}/ | /'{3}[\s\S]*?'{3}/ | /"{3}/ | /'{3}/
RAW_STRING: /#+"/
BYTES: /'(?:[^'\\\n]|\\[^\n])*'?/
ATTRIBUTE: /@[A-Za-z_$#][A-Za-z0-9_$]*/

BAD_CHAR.-10: /[^\n]/
NEWLINE: /\n/
COMMENT: /\/\/[^\n]*/
WHITESPACE: /[ \t\r]+/
%ignore WHITESPACE
%ignore COMMENT
"""
# Terminal priorities: lark's basic lexer tries terminals by priority, then by
# maximum width, not by longest match. So a number with a multiplier must be
# tried before a float, a float before an int (else `1.5` lexes as `1` `.5`),
# and `_|_` before identifiers (else it lexes as `_` `|` `_`).

# Tokens after which a newline (or the end of the file) stands for a comma
# (CUE spec, "Commas"): identifiers and keywords, bottom, literals, closing
# brackets, the optional-field mark `?` and `...`. Tokens outside the subset
# that stand for a value (attributes, stray characters) count too, so that an
# error in them does not swallow the next line.
COMMA_TRIGGERS = frozenset(
    {
        "IDENT",
        "BOTTOM",
        "INT",
        "FLOAT",
        "SI_NUMBER",
        "STRING",
        "MULTILINE_STRING",
        "BYTES",
        "UNTERMINATED_STRING",
        "RAW_STRING",
        "ATTRIBUTE",
        "BAD_CHAR",
        "RPAR",
        "RSQB",
        "RBRACE",
        "QMARK",
        "ELLIPSIS",
    }
)

NEWLINE_COMMA = "\n"
"""The value of a comma the post-lexer inserted for a newline."""
EOF_COMMA = ""
"""The value of a comma the post-lexer inserted at the end of the file."""


class CommaInserter(PostLex):
    """Turns significant newlines into ``COMMA`` tokens and drops the others.

    ``previous`` and ``current`` are the last two tokens handed to the parser;
    the error reporter reads them to explain a failure in context.
    """

    always_accept = ("NEWLINE",)

    def __init__(self) -> None:
        self.previous: Token | None = None
        self.current: Token | None = None

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        last_type: str | None = None
        last: Token | None = None
        for token in stream:
            if token.type == "NEWLINE":
                if last_type in COMMA_TRIGGERS:
                    last_type = "COMMA"
                    yield self._emit(Token.new_borrow_pos("COMMA", NEWLINE_COMMA, token))
                continue
            last_type = token.type
            last = token
            yield self._emit(token)
        if last_type in COMMA_TRIGGERS and last is not None:
            end = Token.new_borrow_pos("COMMA", EOF_COMMA, last)
            yield self._emit(end)

    def _emit(self, token: Token) -> Token:
        self.previous, self.current = self.current, token
        return token


@functools.cache
def _parser() -> Lark:
    # lark resolves a shift/reduce conflict silently (as shift); the grammar
    # has none, and tests/manifest/test_syntax.py keeps it that way.
    return Lark(
        GRAMMAR,
        start="file",
        parser="lalr",
        lexer="basic",
        postlex=CommaInserter(),
        maybe_placeholders=True,
        propagate_positions=True,
    )


def parser() -> tuple[Lark, CommaInserter]:
    """The shared LALR parser and its post-lexer (not thread-safe: one parse at a time)."""
    lark = _parser()
    postlex = lark.options.postlex
    assert isinstance(postlex, CommaInserter)
    return lark, postlex
