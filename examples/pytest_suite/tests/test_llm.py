def test_summary_names_the_topic(topic, llm):
    answer = llm.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"Write two sentences about {topic}."}],
    )
    assert answer.choices[0].message.content.strip()
