"""The official `openai` Python client against `llamaduo-trainer serve`: models, chat,
streaming chat (chunks add up to the non-streamed greedy answer), completions, and an
OpenAI-shaped 400 surfacing as `openai.BadRequestError`.

Usage: openai_client.py BASE_URL   (BASE_URL ends with /v1)
"""

import sys

import openai


def main() -> None:
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

    models = client.models.list()
    names = [m.id for m in models.data]
    assert len(names) == 1, names
    name = names[0]

    messages = [{"role": "user", "content": "Question 2: how many apples are in basket 2?"}]
    chat = client.chat.completions.create(
        model=name, messages=messages, max_tokens=12, temperature=0
    )
    assert chat.object == "chat.completion", chat
    choice = chat.choices[0]
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    assert chat.usage.completion_tokens >= 1
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    text = choice.message.content

    stream = client.chat.completions.create(
        model=name,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, finish, usage, usage_chunks = [], None, None, 0
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            usage_chunks += 1
            # As OpenAI: usage comes once, in a last chunk without choices.
            assert chunk.choices == [], chunk
        for c in chunk.choices:
            if c.delta.content:
                parts.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert "".join(parts) == text, ("".join(parts), text)
    assert finish == choice.finish_reason, finish
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens
    assert usage_chunks == 1, usage_chunks

    completion = client.completions.create(
        model=name, prompt="Question 4:", max_tokens=5, temperature=0
    )
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert isinstance(completion.choices[0].text, str)

    try:
        client.chat.completions.create(model=name, messages=messages, temperature=9)
        raise AssertionError("temperature 9 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["param"] == "temperature", e.body
    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.code == "model_not_found", e.body

    print(f"ok: {name} answered {text!r} ({len(parts)} streamed pieces)")


if __name__ == "__main__":
    main()
