"""Builders of tiny datasets in their official distribution formats, made on the fly by the tests."""
