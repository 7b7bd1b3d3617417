"""The Prefect UI's run forms (a deployment -> Custom run): every field of every flow's form, the stages' settings
nested in it included, has a readable title and a plain description, and no text of the form is Sphinx markup."""

import re

import pytest

from xlmflow.flows.pipeline import pipeline
from xlmflow.flows.registry import STAGES

MARKUP = re.compile(r"``|:(class|func|meth|mod|data|attr):`")


def form_problems(flow) -> list[str]:
    """What Prefect's form for ``flow`` would show badly: a field without a description or title, markup."""
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow).model_dump_for_openapi()
    problems = []

    def fields(where: str, model: dict) -> None:
        if MARKUP.search(model.get("description") or ""):
            problems.append(f"{where}: markup in its description: {model['description'][:80]!r}")
        for key, field in model.get("properties", {}).items():
            if not (field.get("description") or "").strip():
                problems.append(f"{where}.{key}: no description")
            if not (field.get("title") or "").strip():
                problems.append(f"{where}.{key}: no title")
            if MARKUP.search(field.get("description") or ""):
                problems.append(f"{where}.{key}: markup in its description: {field['description'][:80]!r}")

    fields(flow.name, schema)
    for name, model in (schema.get("definitions") or {}).items():
        fields(name, model)
    return problems


@pytest.mark.parametrize("flow", [pipeline, *(s.flow for s in STAGES)], ids=lambda f: f.name)
def test_every_field_of_the_run_form_is_described_in_plain_text(flow):
    assert form_problems(flow) == []


def test_the_check_finds_a_field_without_a_description_and_markup():
    from prefect import flow
    from pydantic import BaseModel, Field

    class Knobs(BaseModel):
        """Settings of the ``demo``."""

        steps: int = 3
        lr: float = Field(1e-3, description="peak learning rate")

    @flow(name="undocumented")
    def undocumented(run_dir: str, knobs: Knobs | None = None) -> None:
        """A flow.

        Args:
            run_dir: where it runs
        """

    assert form_problems(undocumented) == [
        "undocumented.knobs: no description",
        "Knobs: markup in its description: 'Settings of the ``demo``.'",
        "Knobs.steps: no description",
    ]
