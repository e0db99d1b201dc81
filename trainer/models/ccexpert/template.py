"""CCExpert's fixed prompt (authors' code, ``preprocess_qwen``) and its ChatML chat template."""

import json

from trainer.models.chat_templates import CHATML_TURNS_END


CCEXPERT_PROMPT = (
    "This is the Image1 <image>. This is the second Image2 <image>.\nWhat difference happened from Image1 to Image2?"
)

CCEXPERT_SYSTEM = "You are a helpful assistant."
CCEXPERT_QUESTION = CCEXPERT_PROMPT.split("\n", 1)[1]
_PAIR_PREFIX = CCEXPERT_PROMPT.split("\n", 1)[0] + "\n"

# The authors' prompt in ChatML (qwen_1_5). A user turn with two images always renders the authors' fixed question,
# whatever question text the row carries, so one dataset (GeoLLaVA's or LEVIR-CC's) feeds both model families;
# `apply_chat_template(..., use_question=True)` renders the row's question instead (e.g. a user's own in the Space).
CCEXPERT_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'][0]['text'] + '<|im_end|>\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>system\\n" + CCEXPERT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ '<|im_start|>user\\n' }}"
    "{%- set images = message['content'] | selectattr('type', 'equalto', 'image') | list -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | list -%}"
    "{%- if images | length == 2 -%}"
    "{{ " + json.dumps(_PAIR_PREFIX) + " }}"
    "{%- if use_question is defined and use_question and texts -%}{{ texts | join(' ') }}"
    "{%- else -%}{{ " + json.dumps(CCEXPERT_QUESTION) + " }}{%- endif -%}"
    "{%- else -%}"
    "{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif c['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif c['type'] == 'text' -%}{{ c['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}" + CHATML_TURNS_END
)
