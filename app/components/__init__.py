"""Small building blocks shared by the pages: formatting, tables, form helpers."""
