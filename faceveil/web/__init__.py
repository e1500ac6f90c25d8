"""``faceveil serve``: a local web page to anonymize, preview, recover and verify photos.

- :mod:`faceveil.web.app`: the FastAPI app, its routes, the token and host checks, one-line errors;
- :mod:`faceveil.web.jobs`: the bounded queue and the single worker every action runs on;
- :mod:`faceveil.web.limits`: upload size and pixel limits;
- :mod:`faceveil.web.actions`: what each button does with the library (the only module that calls it);
- ``static/``: the page itself, plain HTML, CSS and JavaScript (no build step, nothing fetched from
  elsewhere).

Keys and passphrases arrive with each request as form fields, are turned into a
:class:`~faceveil.keys.SecretKey` in memory by the job that needs them, and are dropped when
it ends: never written to a file, a log or a file name.
"""
