"""finetui's own chat templates, as Jinja strings for ``tokenizer.apply_chat_template``.

Light module (no imports). Each template wraps the trained part of an assistant turn in
``{% generation %}...{% endgeneration %}`` *including* the token that ends the turn, so
``return_assistant_tokens_mask`` marks exactly what the model must learn to produce, stop
token included. Whatever follows the end token (a newline before the next turn) is
outside the markers: it is never generated, so it is never trained.

``finetui_bos`` is passed by ``engine.data.render``: the tokenizer's BOS when that
tokenizer would add one to plain text (Llama-style base models), else "". The tokenizer's
own templates handle BOS themselves.

- ``chatml``: ``<|im_start|>role\\n...<|im_end|>`` (Qwen/OpenAI style), tool calls in
  Hermes ``<tool_call>`` JSON, tools listed in the system turn.
- ``qa``: ``### Question: ...\\n### Answer: ...`` (the prompt ends at "Answer:" so the
  space before the answer belongs to the first answer token, as at generation time).
- ``alpaca``: the Stanford Alpaca prompt (no-input variant; the input, if any, is already
  part of the instruction in the canonical conversation).
- ``plain``: the turns concatenated, one per line, each assistant reply ending with EOS.
"""

from __future__ import annotations

_BOS = "{%- if finetui_bos is defined and finetui_bos %}{{- finetui_bos }}{%- endif %}\n"

_TOOL_CALLS = (
    "{%- for tool_call in message.tool_calls %}\n"
    "{%- set call = tool_call.function if tool_call.function is defined else tool_call %}\n"
    "{%- if (loop.first and message.content) or not loop.first %}{{- '\\n' }}{%- endif %}\n"
    "{{- '<tool_call>\\n{\"name\": \"' + call.name + '\", \"arguments\": ' }}\n"
    "{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}\n"
    "{{- '}\\n</tool_call>' }}\n"
    "{%- endfor %}\n"
)

CHATML = (
    _BOS
    + "{%- set loop_messages = messages %}\n"
    "{%- if tools %}\n"
    "{{- '<|im_start|>system\\n' }}\n"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- set loop_messages = messages[1:] %}{%- endif %}\n"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}\n"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}\n"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in loop_messages %}\n"
    "{%- if message.role == 'assistant' %}\n"
    "{{- '<|im_start|>assistant\\n' }}\n"
    "{%- generation %}\n"
    "{%- if message.content %}{{- message.content }}{%- endif %}\n"
    "{%- if message.tool_calls %}\n" + _TOOL_CALLS + "{%- endif %}\n"
    "{{- '<|im_end|>' }}\n"
    "{%- endgeneration %}\n"
    "{{- '\\n' }}\n"
    "{%- else %}\n"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)

# Tool calls in the simple formats: the call as JSON in the reply text.
_INLINE_TOOL_CALLS = (
    "{%- if message.tool_calls %}\n"
    "{%- for tool_call in message.tool_calls %}\n"
    "{%- set call = tool_call.function if tool_call.function is defined else tool_call %}\n"
    "{%- if (loop.first and message.content) or not loop.first %}{{- '\\n' }}{%- endif %}\n"
    "{{- '{\"name\": \"' + call.name + '\", \"arguments\": ' }}\n"
    "{%- if call.arguments is string %}{{- call.arguments }}{%- else %}{{- call.arguments | tojson }}{%- endif %}\n"
    "{{- '}' }}\n"
    "{%- endfor %}\n"
    "{%- endif %}\n"
)

_TOOLS_LIST = (
    "{%- if tools %}\n"
    "{{- 'Tools:\\n' }}{%- for tool in tools %}{{- (tool | tojson) + '\\n' }}{%- endfor %}{{- '\\n' }}\n"
    "{%- endif %}\n"
)

QA = (
    _BOS
    + "{%- set loop_messages = messages %}\n"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- set loop_messages = messages[1:] %}{%- endif %}\n"
    + _TOOLS_LIST
    + "{%- for message in loop_messages %}\n"
    "{%- if message.role == 'user' %}\n"
    "{{- '### Question: ' + message.content + '\\n### Answer:' }}\n"
    "{%- elif message.role == 'assistant' %}\n"
    "{%- generation %}{{- ' ' }}{%- if message.content %}{{- message.content }}{%- endif %}\n"
    + _INLINE_TOOL_CALLS
    + "{{- eos_token }}{%- endgeneration %}\n"
    "{{- '\\n' }}\n"
    "{%- else %}\n"
    "{{- '### ' + message.role | capitalize + ': ' + message.content + '\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
)

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)

ALPACA = (
    _BOS
    + "{%- set loop_messages = messages %}\n"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- set loop_messages = messages[1:] %}\n"
    "{%- else %}{{- '" + ALPACA_PREAMBLE + "\\n\\n' }}{%- endif %}\n"
    + _TOOLS_LIST
    + "{%- for message in loop_messages %}\n"
    "{%- if message.role == 'user' %}\n"
    "{{- '### Instruction:\\n' + message.content + '\\n\\n### Response:\\n' }}\n"
    "{%- elif message.role == 'assistant' %}\n"
    "{%- generation %}{%- if message.content %}{{- message.content }}{%- endif %}\n"
    + _INLINE_TOOL_CALLS
    + "{{- eos_token }}{%- endgeneration %}\n"
    "{{- '\\n\\n' }}\n"
    "{%- else %}\n"
    "{{- '### Input:\\n' + message.content + '\\n\\n### Response:\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
)

PLAIN = (
    _BOS
    + _TOOLS_LIST
    + "{%- for message in messages %}\n"
    "{%- if message.role == 'assistant' %}\n"
    "{%- generation %}{%- if message.content %}{{- message.content }}{%- endif %}\n"
    + _INLINE_TOOL_CALLS
    + "{{- eos_token }}{%- endgeneration %}\n"
    "{{- '\\n' }}\n"
    "{%- else %}\n"
    "{{- message.content + '\\n' }}\n"
    "{%- endif %}\n"
    "{%- endfor %}\n"
)

BUILTIN = {"chatml": CHATML, "qa": QA, "alpaca": ALPACA, "plain": PLAIN}

# Tokens a built-in template writes literally, which a tokenizer must know as single tokens.
REQUIRED_TOKENS = {"chatml": ("<|im_start|>", "<|im_end|>")}

# The token that closes an assistant turn in each built-in template (None: the tokenizer's eos).
END_TOKENS = {"chatml": "<|im_end|>", "qa": None, "alpaca": None, "plain": None}
