"""DNS capture for the ``dns_capture`` sensor: packet socket, headers, messages, owners.

:mod:`~vigil.agent.dnscap.capture` receives DNS packets through a kernel-filtered packet socket,
:mod:`~vigil.agent.dnscap.packets` reads their IP and transport headers,
:mod:`~vigil.agent.dnscap.messages` reads the DNS message with dnspython (imported only there,
so the agent loads without it), and :mod:`~vigil.agent.dnscap.owners` finds the process that
owns the local socket.
"""
