"""DAG integrity over the whole DagBag: imports, cycles, docs, owner, tags, retries."""

import pytest

from enrollment_airflow.defaults import OWNER, Tag

ALLOWED_TAGS = {str(t) for t in Tag}


def test_dagbag_imports_without_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors
    assert dagbag.dag_ids, "no DAG found in dags/"


def _dag_ids() -> list[str]:
    """DAG ids for parametrisation; collection runs before fixtures, so parse here (it is cheap)."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import ROOT

    return sorted(DagBag(dag_folder=str(ROOT / "dags")).dags)


@pytest.fixture(params=_dag_ids())
def dag(request, dagbag):
    return dagbag.dags[request.param]


def test_no_cycles(dag):
    from airflow.utils.dag_cycle_tester import check_cycle

    check_cycle(dag)  # raises AirflowDagCycleException


def test_has_doc_md_for_the_person_on_call(dag):
    assert dag.doc_md and len(dag.doc_md.strip()) > 80, f"{dag.dag_id}: write doc_md for the UI"


def test_has_owner_tags_and_retries(dag):
    assert dag.default_args.get("owner") == OWNER, dag.dag_id
    assert dag.tags and set(dag.tags) <= ALLOWED_TAGS, (
        f"{dag.dag_id}: tags {dag.tags} not in {sorted(ALLOWED_TAGS)}"
    )
    assert dag.default_args.get("retries", 0) >= 1, f"{dag.dag_id}: set retries in default_args"


def test_catchup_is_chosen_on_purpose(dag):
    assert dag.catchup is False or dag.schedule is not None, dag.dag_id
