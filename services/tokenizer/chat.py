"""Render a conversation into prompt text with the model's chat template (or the request's).

Rendering is transformers' `apply_chat_template` in its sandboxed Jinja
environment, so templates behave exactly as in HF; this module validates the
request first and turns template failures into errors the caller can act on.
"""

from __future__ import annotations

import jinja2

from cairn.common.errors import FailedPrecondition, InvalidArgument, PermissionDenied

from .model_tokenizer import ModelTokenizer
from .records import ChatInput


def render_chat(tokenizer: ModelTokenizer, chat: ChatInput, *, allow_request_template: bool = True) -> str:
    """The prompt text for `chat`; InvalidArgument for bad messages or a template that fails on them."""
    messages = [dict(m) for m in chat.messages]
    if not messages:
        raise InvalidArgument("chat has no messages")
    for i, message in enumerate(messages):
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidArgument(f"messages[{i}] has no role (system, user, assistant or tool)")
    template = chat.chat_template or None
    if template is not None and not allow_request_template:
        raise PermissionDenied(
            "this tokenizer service does not accept chat templates in requests "
            "(allow_request_chat_template is off); use the model's own template"
        )
    if template is None and not tokenizer.has_chat_template:
        raise FailedPrecondition(
            f"{tokenizer.name} has no chat template; pass one in chat_template, or send plain text"
        )
    add_generation_prompt = (
        not chat.continue_final_message if chat.add_generation_prompt is None else chat.add_generation_prompt
    )
    if add_generation_prompt and chat.continue_final_message:
        raise InvalidArgument(
            "add_generation_prompt and continue_final_message exclude each other: one opens a new "
            "assistant turn, the other continues the last message"
        )
    try:
        return tokenizer.hf.apply_chat_template(
            messages,
            tools=[dict(t) for t in chat.tools] or None,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=chat.continue_final_message,
            tokenize=False,
        )
    except jinja2.TemplateSyntaxError as e:
        raise InvalidArgument(f"chat template syntax error at line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        # Templates reject conversations they cannot render with raise_exception(...).
        raise InvalidArgument(f"chat template error: {e}") from None
    except (ValueError, TypeError) as e:
        # transformers' own checks (e.g. the final message to continue is missing)
        # and template expressions applied to values of the wrong type.
        raise InvalidArgument(f"cannot render the chat: {e}") from None
