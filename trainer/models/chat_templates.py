"""Chat templates: the four families' formats as their checkpoints publish them, and the project's own.

The published templates come from transformers' own sources and tests, LLaVA-OneVision's copied, the others
reconstructed (each one's provenance beside it); the collator does not depend on ``{% generation %}`` markers, so they
are used as they are. The formats:
docs/training.md "The four families' prompt formats".
"""

#: ``llava-hf/LLaVA-NeXT-Video-7B-hf``'s chat template. Reconstructed from: the llava-hf Vicuna template of
#: ``llava-hf/llava-1.5-7b-hf`` (``message['role'].upper() + ': '``, images as ``<image>\n``, text + ``' '``, the
#: answer in ``{% generation %}``, generation prompt ``ASSISTANT:``; transformers' tests/models/llava/
#: test_processing_llava.py) with the video loop of the llava-hf video checkpoints (``<video>\n`` after the images,
#: as in convert_llava_onevision_weights_to_hf.py), and checked against transformers'
#: tests/models/llava_next_video/test_processor_llava_next_video.py, whose expected ids for the generation prompt of a
#: video + "What is shown in this video?" decode to ``<s>USER: <video>\nWhat is shown in this video? ASSISTANT:``
#: (``[1, 3148, 1001, 29901, 29871, 32000, 13, ...]``), and against the model docstrings
#: (``"USER: <video>\nWhy is this video funny? ASSISTANT:"``, modeling_llava_next_video.py).
LLAVA_NEXT_VIDEO_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: ``llava-hf/llava-onevision-qwen2-*-ov-hf``'s chat template, copied from the string of transformers'
#: tests/models/llava_onevision/test_processor_llava_onevision.py (``prepare_processor_dict``), whose
#: ``test_chat_template`` renders the checkpoint llava-hf/llava-onevision-qwen2-7b-ov-hf's. It is that string
#: character for character, except that the three newlines inside its Jinja string literals, which that source
#: writes as the escape ``\n`` (``'\\n'`` in Python), are here the newline characters Jinja reads them as: so, as
#: ``save_pretrained`` writes a chat_template.json (indented JSON, a final newline), it is the checkpoint's 826 bytes.
#: Its quirks: a space after the role (``<|im_start|>user <video>\n...``), no newline after ``<|im_end|>``, and an
#: assistant turn rendered as ``<|im_start|>assistant \n{answer}`` while the generation prompt ends
#: ``<|im_start|>assistant\n``. It supersedes the one transformers'
#: models/llava_onevision/convert_llava_onevision_weights_to_hf.py writes (``<|im_start|>user\n<video>\n...``,
#: 824 bytes as JSON).
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: ``Qwen/Qwen2.5-VL-7B-Instruct``'s chat template (Qwen2-VL's), as transformers' tests/models/qwen2_vl/
#: test_processing_qwen2_vl.py carries it (``prepare_processor_dict``): the default system prompt, ``<|vision_start|>
#: <|image_pad|><|vision_end|>`` per image, no ``{% generation %}`` block.
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The project's own Vicuna video template: the same text as LLaVA-NeXT-Video's for a prompt, with `{% generation %}`
# markers around the answer *and* its EOS. Video-LLaVA's checkpoint publishes no template, so this one renders the
# format its model card documents ("USER: <video>\n{q} ASSISTANT:"). The generation prompt ends at "ASSISTANT:" and
# the answer starts with its own leading space, so training and generation tokenize the answer identically.
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


#: The template each family's published checkpoint carries (what the tiny models carry too).
PUBLISHED_TEMPLATES = {
    "llava-next-video": LLAVA_NEXT_VIDEO_TEMPLATE,
    "llava-onevision": LLAVA_ONEVISION_TEMPLATE,
    "qwen2.5-vl": QWEN2_5_VL_TEMPLATE,
}
#: For checkpoints that publish none (``LanguageBind/Video-LLaVA-7B-hf``): the documented format.
FALLBACK_TEMPLATES = {"video-llava": VICUNA_TEMPLATE}


def ensure_chat_template(processor, family: str) -> bool:
    """Give ``processor`` its family's documented template when the checkpoint published none; True if it did."""
    if getattr(processor, "chat_template", None) or family not in FALLBACK_TEMPLATES:
        return False
    processor.chat_template = FALLBACK_TEMPLATES[family]
    return True
