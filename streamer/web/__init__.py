"""``harstream web``: a read-only web page for a fleet of wearers, fed by what the recognizers already
write (the history store, and with ``--broker`` the topics ``--publish`` sends), so that any number
of recognizers on any machines show up on one page. Its modules: :mod:`streamer.web.server` (routes,
safety, the live push), :mod:`streamer.web.data` (the API's answers from the store),
:mod:`streamer.web.live` (the broker's state); the command is streamer/cli/web.py. The page itself
is package files under ``static/`` (HTML, one script, one stylesheet: no build step, nothing from
another site). Nothing here imports torch.
"""
