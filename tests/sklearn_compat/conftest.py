def pytest_collection_modifyitems(config, items):
    from .test_sklearn_k_means import pytest_collection_modifyitems_for

    pytest_collection_modifyitems_for([item for item in items if "sklearn_compat" in str(item.fspath)])
