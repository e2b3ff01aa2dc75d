"""Before/after pages: the comparison viewer shared by ``sipl restore --page`` and ``sipl report``.

- ``component``: the viewer itself (the vendored ``img-comparison-slider`` divider plus ``static/viewer.js``:
  keyboard steps, a before/after toggle, zoom to 1:1 pixels and panning), its Jinja2 templates (autoescaped, so a
  file name never becomes markup), file-URL and thumbnail helpers.
- ``restore_page``: ``OUT/index.html`` of ``sipl restore --page``.

Pages work opened from disk (``file://``): CSS and scripts are inlined, images are files beside the page (or the
restored inputs themselves, by relative link), nothing is fetched from a network.
"""
