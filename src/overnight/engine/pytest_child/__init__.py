"""The pytest plugin a pytest-suite night loads into each cycle's pytest process.

The folder is put first on that process's ``PYTHONPATH`` and the plugin is loaded as the
top-level module ``overnight_pytest`` (``-p overnight_pytest``), so loading it imports
nothing of overnight: a cycle's pytest starts as fast as plain pytest. Only a test that
fails with an error a component may have caused imports the components, to classify it.
"""
