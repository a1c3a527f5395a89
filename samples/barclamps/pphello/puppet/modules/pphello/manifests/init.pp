# pphello: one page served by busybox httpd as a systemd unit. An ordinary module: it knows nothing
# of Crowbar; its parameters come from Hiera (automatic parameter lookup) or a class declaration.
class pphello(
  String $message = 'Hello from pphello',
  Integer[1, 65535] $port = 8091,
  String $dir = '/srv/pphello',
  Boolean $service = true,
) {
  file { $dir:
    ensure => directory,
    mode   => '0755',
  }
  file { "${dir}/index.html":
    content => "<h1>${message}</h1>\n<p>(pphello on ${facts['networking']['hostname']})</p>\n",
    mode    => '0644',
  }
  if $service {
    file { '/etc/systemd/system/pphello.service':
      content => epp('pphello/pphello.service.epp', { 'port' => $port, 'dir' => $dir }),
      mode    => '0644',
    }
    ~> exec { 'pphello daemon-reload':
      command     => '/bin/systemctl daemon-reload',
      refreshonly => true,
    }
    -> service { 'pphello':
      ensure    => running,
      enable    => true,
      subscribe => File['/etc/systemd/system/pphello.service'],
    }
  }
}
