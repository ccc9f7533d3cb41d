"""Browser tests of the progress widget; see conftest.py. A package, so that its
package-scoped server and browser are torn down before the other tests run."""
