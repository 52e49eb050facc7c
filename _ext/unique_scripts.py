"""Sphinx extension: drop repeated inline scripts from each page.

sphinx-thebe registers its inline configuration script (``const THEBE_JS_URL = ...``) once with the app and once
with the builder, so every page declares those constants twice and the browser reports a SyntaxError. Keeping
the first copy of each identical script fixes it without touching anything else.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", script) or "", tuple(sorted(getattr(script, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"][:] = unique  # in place: later handlers append to this same list


def setup(app):
    # Early: Sphinx stops calling html-page-context handlers at the first one that returns a template name.
    app.connect("html-page-context", _dedupe, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
