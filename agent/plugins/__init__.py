"""The built-in restart plugins (see :mod:`crctl.plugins` for the contract):

* :class:`~agent.plugins.tcp_endpoints.TcpEndpoints` ("tcp-endpoints"): the rank's sockets
  carry its hosts' new addresses.
* :class:`~agent.plugins.host_files.HostFiles` ("host-files"): text files the rank reads
  (a peers list, a configuration file) name the new hosts and addresses."""
