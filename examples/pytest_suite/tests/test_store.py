import pytest
from briefing import briefing, slug


def test_briefing_is_stored(topic, db, overnight_input):
    key = f"{slug(topic)}-{overnight_input.seed}"
    body = briefing(topic, [], "stored")
    param = "?" if db.__class__.__module__ == "sqlite3" else "%s"
    with db:
        db.execute(f"INSERT INTO briefings (slug, body) VALUES ({param}, {param})", (key, body))
    row = db.execute(f"SELECT body FROM briefings WHERE slug = {param}", (key,)).fetchone()
    assert row[0] == body


def test_postgres_only_feature(overnight_components):
    if overnight_components["db"].dialect != "postgresql":
        pytest.skip("needs PostgreSQL (overnight.postgres.toml)")
