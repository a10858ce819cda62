"""Key templates: compile, render, and the SCAN pattern of a truncate."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.templates import KeyTemplate, TemplateError


def compile_(source: str, *, versioned: bool = True) -> KeyTemplate:
    return KeyTemplate.compile(source, versioned=versioned)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """Valkey's SCAN MATCH semantics for the subset `pattern()` emits: `*` and `\\x`."""
    out, chars = [], iter(pattern)
    for char in chars:
        if char == "\\":
            out.append(re.escape(next(chars)))
        elif char == "*":
            out.append(".*")
        else:
            assert char not in "?[]", f"unescaped glob syntax in {pattern!r}"
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


# --------------------------------------------------------------------------- compile


def test_one_placeholder_splits_into_two_literals() -> None:
    template = compile_("post:{id}")
    assert (template.literals, template.columns) == (("post:", ""), ("id",))


def test_compiled_template_keeps_its_source_and_kind() -> None:
    template = compile_("feed:{neighborhood_id}", versioned=False)
    assert template.source == "feed:{neighborhood_id}"
    assert template.versioned is False


def test_several_placeholders_are_kept_in_order() -> None:
    template = compile_("c:{post_id}:{id}:x")
    assert template.columns == ("post_id", "id")
    assert template.literals == ("c:", ":", ":x")


def test_placeholder_may_hold_a_dollar_and_underscores() -> None:
    assert compile_("k:{_a$1}").columns == ("_a$1",)


def test_escaped_braces_are_literal_text() -> None:
    template = compile_("{{literal}}:{id}")
    assert template.columns == ("id",)
    assert template.literals == ("{literal}:", "")


def test_escaped_braces_around_a_placeholder_make_a_hash_tag() -> None:
    # Valkey cluster hash tags: "user:{42}:profile" keeps a user's keys in one slot.
    template = compile_("user:{{{id}}}:profile")
    assert template.columns == ("id",)
    assert template.render({"id": "42"}) == "user:{42}:profile"


def test_doubly_escaped_braces_are_two_literal_braces() -> None:
    template = compile_("{{{{id}}}}:{id}")
    assert template.literals == ("{{id}}:", "")


def test_template_is_frozen() -> None:
    template = compile_("post:{id}")
    with pytest.raises(AttributeError):
        template.source = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("source", ["post:{id:>5}", "post:{id!r}", "post:{id:d}"])
def test_format_spec_or_conversion_is_rejected(source: str) -> None:
    with pytest.raises(TemplateError, match="no format specs"):
        compile_(source)


@pytest.mark.parametrize("source", ["post:{}", "post:{ }"])
def test_empty_placeholder_is_rejected(source: str) -> None:
    with pytest.raises(TemplateError, match="not a column name"):
        compile_(source)


@pytest.mark.parametrize("source", ["post:{1id}", "post:{post-id}", "post:{a.b}", "x:{é}"])
def test_placeholder_that_is_not_an_identifier_is_rejected(source: str) -> None:
    with pytest.raises(TemplateError, match="not a column name"):
        compile_(source)


def test_empty_template_is_rejected() -> None:
    with pytest.raises(TemplateError, match="empty"):
        compile_("")


@pytest.mark.parametrize(
    "source", ["post:{id", "post:id}", "{{id}", "{id}}}}", "post:}{id}", "{a{b}}", "{", "}",
               "a}b{id}"],
)
def test_unbalanced_brace_is_rejected(source: str) -> None:
    with pytest.raises(TemplateError, match=r"unbalanced brace|not a column name"):
        compile_(source)


def test_template_error_is_a_value_error() -> None:
    assert issubclass(TemplateError, ValueError)


# --------------------------------------------------------------------------- render


def test_render_one_placeholder() -> None:
    assert compile_("post:{id}").render({"id": "42"}) == "post:42"


def test_render_several_placeholders() -> None:
    assert compile_("c:{post_id}:{id}").render({"post_id": "7", "id": "42"}) == "c:7:42"


def test_render_placeholder_only() -> None:
    assert compile_("{id}").render({"id": "42"}) == "42"


def test_render_same_column_twice() -> None:
    assert compile_("{id}/{id}").render({"id": "9"}) == "9/9"


def test_render_ignores_extra_values() -> None:
    assert compile_("post:{id}").render({"id": "1", "other": "2"}) == "post:1"


def test_render_missing_value_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        compile_("c:{post_id}:{id}").render({"id": "1"})


# --------------------------------------------------------------------------- pattern


def test_pattern_replaces_a_placeholder_with_a_star() -> None:
    assert compile_("post:{id}").pattern() == "post:*"


def test_pattern_of_several_placeholders() -> None:
    assert compile_("c:{post_id}:{id}").pattern() == "c:*:*"


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("a*b:{id}", r"a\*b:*"),
        ("a?b:{id}", r"a\?b:*"),
        ("a[1]:{id}", r"a\[1\]:*"),
        ("a\\b:{id}", "a\\\\b:*"),
        ("*?[]\\:{id}:*", "\\*\\?\\[\\]\\\\:*:\\*"),
    ],
)
def test_pattern_escapes_glob_special_characters(source: str, pattern: str) -> None:
    assert compile_(source).pattern() == pattern


def test_pattern_keeps_hash_tag_braces() -> None:
    assert compile_("user:{{{id}}}:profile").pattern() == "user:{*}:profile"


def test_pattern_matches_rendered_keys_and_not_others() -> None:
    template = compile_("a*[b]?\\:{id}")
    regex = glob_regex(template.pattern())
    assert regex.fullmatch(template.render({"id": "42"}))
    assert not regex.fullmatch("aX[b]?\\:42")


LITERAL = st.text(alphabet=st.sampled_from("ab:*?[]\\-{}"), max_size=6)
VALUE = st.text(min_size=0, max_size=8)


@given(LITERAL, LITERAL, VALUE, VALUE)
def test_pattern_matches_every_key_the_template_renders(prefix: str, middle: str, a: str,
                                                        b: str) -> None:
    source = prefix.replace("{", "{{").replace("}", "}}") + "{a}" + \
        middle.replace("{", "{{").replace("}", "}}") + "{b}"
    template = compile_(source)
    key = template.render({"a": a, "b": b})
    assert key == prefix + a + middle + b
    assert glob_regex(template.pattern()).fullmatch(key)


def test_control_characters_in_literals_are_kept() -> None:
    assert compile_("a\x00b\x01:{id}").render({"id": "1"}) == "a\x00b\x01:1"


@given(st.lists(st.sampled_from(["x", ":", "{{", "}}", "{id}", "{n}", "*"]), max_size=8))
def test_render_agrees_with_str_format(tokens: list[str]) -> None:
    source = "".join(tokens) or "x"
    template = compile_(source)
    assert template.render({"id": "42", "n": "7"}) == source.format(id="42", n="7")


def test_overlapping_truncate_patterns_are_reported() -> None:
    from reconciler.templates import overlapping_patterns

    posts = (KeyTemplate.compile("post:{id}", versioned=True),)
    comments = (KeyTemplate.compile("post:comments:{id}", versioned=True),)
    profiles = (KeyTemplate.compile("profile:{user_id}", versioned=True),)
    found = overlapping_patterns({"public.posts": posts, "public.comments": comments,
                                  "public.profiles": profiles})
    assert found == ["a truncate of public.posts removes keys matching 'post:*', which also "
                     "match public.comments's 'post:comments:{id}'"]
