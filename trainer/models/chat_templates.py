"""Chat templates the project ships for the families' processors (the tiny models carry them too).

Each marks the answer *and* its end-of-turn token with ``{% generation %}``, so that assistant-only masking trains
the model to stop.
"""

# Vicuna-style, as the llava-hf checkpoints, but with `{% generation %}` markers around the answer *and* its EOS, so
# that assistant-only masking trains the model to stop. The generation prompt ends at "ASSISTANT:" and the answer
# starts with its own leading space, so training and generation tokenize the answer identically.
VICUNA_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ 'USER: ' }}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif c['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ 'ASSISTANT:' }}{% generation %}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}{{ ' ' + c['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)


#: The end of a ChatML template: the user turn's close, the assistant turn (marked for the assistant-token mask) and
#: the generation prompt; the tiny CCExpert's template ends the same way.
CHATML_TURNS_END = (
    "{{ '<|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}"
    "{%- for c in message['content'] -%}{%- if c['type'] == 'text' -%}{{ c['text'] }}{%- endif -%}{%- endfor -%}"
    "{{ '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _chatml_template(image: str, video: str) -> str:
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{ '<|im_start|>user\\n' }}"
        "{%- for c in message['content'] -%}"
        f"{{%- if c['type'] == 'video' -%}}{{{{ '{video}\\n' }}}}"
        f"{{%- elif c['type'] == 'image' -%}}{{{{ '{image}\\n' }}}}"
        "{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}" + CHATML_TURNS_END
    )


CHATML_TEMPLATE = _chatml_template("<image>", "<video>")
QWEN_TEMPLATE = _chatml_template(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
)
