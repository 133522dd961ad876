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

import contextvars
from collections.abc import Iterator

import attrs
from lark import Lark, Token, Transformer
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

// Binary expressions are one flat sequence of operands and operators; the
// AST builder applies CUE's precedence (spec, "Operator precedence"). A
// grammar level per precedence would cost lark a reduction per level for
// every single value.
?expr: unary (binary_op unary)*
!binary_op: "|" | "&" | "||" | "&&" | "==" | rel_op | "+" | "-" | "*" | "/"
!rel_op: ">=" | "<=" | ">" | "<" | "!=" | "=~" | "!~"

?unary: primary
      | STAR unary                  -> default
      | MINUS unary                 -> neg
      | PLUS unary                  -> unary_plus
      | BANG unary                  -> unary_not
      | rel_op unary                -> bound

?primary: operand
        | primary "." IDENT         -> selector
        | primary "." STRING        -> selector
        | primary "[" expr "]"      -> index
        | primary "(" [expr ("," expr)* [","]] ")" -> call

?operand: IDENT                     -> ref
        | "(" expr ")"              -> paren
        | LBRACE [decl ("," decl)* [","]] "}"   -> struct
        | LSQB "]"                                -> list
        | LSQB expr ("," expr)* [","] "]"         -> list
        | LSQB list_ellipsis [","] "]"            -> list
        | LSQB expr ("," expr)* "," list_ellipsis [","] "]"  -> list
        | INT                       -> literal
        | FLOAT                     -> literal
        | STRING                    -> literal
        | BOTTOM                    -> literal
        | SI_NUMBER                 -> literal
        | MULTILINE_STRING          -> literal
        | RAW_STRING                -> literal
        | BYTES                     -> literal
        | UNTERMINATED_STRING       -> literal
        | ATTRIBUTE                 -> literal
        | BAD_CHAR                  -> literal

list_ellipsis: ELLIPSIS [expr]

LBRACE: "{"
LSQB: "["
STAR: "*"
MINUS: "-"
PLUS: "+"
BANG: "!"
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
ARROW.3: "<-"
BLOCK_COMMENT.4: /\/\*[\s\S]*?(?:\*\/|\Z)/
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


@attrs.define
class LexState:
    """What the post-lexer records during one parse.

    ``emitted`` counts the tokens handed to the parser; the syntax error
    reporter uses it to tell an error that follows a successful stretch of
    input from an echo of the previous one. ``block_comments`` are the
    ``/* ... */`` the lexer met: not CUE (the parse goes on as if each were
    a space, or a newline if it spans lines, and each is reported).
    """

    emitted: int = 0
    block_comments: list[Token] = attrs.Factory(list)


LEX_STATE: contextvars.ContextVar[LexState] = contextvars.ContextVar("manifest_lex_state")
"""The state of the parse running in this context (thread or task): each
parse sets its own, so parses never share state."""


class CommaInserter(PostLex):
    """Turns significant newlines into ``COMMA`` tokens and drops the others.
    Stateless: per-parse state is in :data:`LEX_STATE`."""

    always_accept = ("NEWLINE", "BLOCK_COMMENT", "ARROW")
    """Terminals no rule uses that the lexer must still produce: newlines
    (for commas), block comments (to report them), and CUE's `<-` token
    (so that `<-1` is the syntax error it is in CUE, not `< -1`)."""

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        state = LEX_STATE.get(None) or LexState()
        last: Token | None = None
        for token in stream:
            kind = token.type
            if kind == "BLOCK_COMMENT":
                state.block_comments.append(token)
                if "\n" not in token.value:
                    continue
                kind = "NEWLINE"
            if kind == "NEWLINE":
                if last is not None and last.type in COMMA_TRIGGERS:
                    last = Token.new_borrow_pos("COMMA", NEWLINE_COMMA, token)
                    state.emitted += 1
                    yield last
                continue
            last = token
            state.emitted += 1
            yield token
        if last is not None and last.type in COMMA_TRIGGERS:
            state.emitted += 1
            yield Token.new_borrow_pos("COMMA", EOF_COMMA, last)


def make_parser(transformer: Transformer) -> Lark:
    """An LALR parser that builds its result with ``transformer`` while it
    parses (no parse tree is materialised, and nothing recurses on nesting).

    Positions come from tokens (lark's ``propagate_positions`` costs more than
    the rest of the parse).
    """
    return Lark(
        GRAMMAR,
        start="file",
        parser="lalr",
        lexer="basic",
        postlex=CommaInserter(),
        maybe_placeholders=True,
        transformer=transformer,
    )
