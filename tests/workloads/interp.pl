#!/usr/bin/perl
# interp.pl STATEDIR - a Perl interpreter's heap survives.
#
# Builds a hash of 200k entries with computed values and a checksum, says
# ready, waits for SIGTERM, then recomputes everything and compares.
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $N = 200_000;
my $dir = $ARGV[0] or die "usage: interp.pl STATEDIR\n";
my $term = 0;

sub write_file {
    my ($name, $text) = @_;
    my $tmp = "$dir/.$name.tmp";
    open(my $f, '>', $tmp) or die "open $tmp: $!";
    print $f $text;
    close($f) or die "close $tmp: $!";
    rename($tmp, "$dir/$name") or die "rename $tmp: $!";
}

sub verdict {
    my ($text, $code) = @_;
    write_file("verdict", "$text\n");
    exit($code);
}

sub build {
    my %h;
    $h{"k$_"} = ($_ * 2654435761) % 4294967296 for 0 .. $N - 1;
    return \%h;
}

sub digest {
    my ($h) = @_;
    return md5_hex(join(';', map { "$_=$h->{$_}" } sort keys %$h));
}

$SIG{TERM} = sub { $term = 1; };
my $data = build();
my @strings = map { sprintf("s%08x", $_ * 40503) } 0 .. 49_999;
my $sum = digest($data);
$| = 1;
print "before\n";
write_file("ready", "$$\n");
sleep(1) until $term;
print "after\n";

my $n = scalar(keys %$data);
verdict("FAIL: the hash has $n entries, expected $N", 1) if $n != $N;
my $fresh = build();
for my $k (keys %$fresh) {
    my $v = $data->{$k};
    verdict("FAIL: data{$k} is " . ($v // 'undef') . ", expected $fresh->{$k}", 1)
        if !defined($v) || $v != $fresh->{$k};
}
verdict("FAIL: the hash's checksum changed", 1) if digest($data) ne $sum;
for my $i (0 .. $#strings) {
    verdict("FAIL: strings[$i] is $strings[$i]", 1)
        if $strings[$i] ne sprintf("s%08x", $i * 40503);
}
verdict("PASS", 0);
