"""A plugin module whose own dependency is not installed (for `mapperkit drivers`)."""

import no_such_dependency_pkg  # noqa: F401
