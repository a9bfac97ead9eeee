"""The project registers with Airflow as a provider: the Marketing Cloud connection type exists."""


def test_marketing_cloud_connection_type_is_registered():
    from airflow.providers_manager import ProvidersManager
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    assert "enrollment-pipelines" in ProvidersManager().providers
    hook = ProvidersManagerTaskRuntime().hooks.get("marketing_cloud")
    assert (
        hook is not None and hook.hook_class_name == "enrollment_airflow.hooks.MarketingCloudHook"
    )
