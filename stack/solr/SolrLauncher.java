import java.nio.file.Path;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;

import org.apache.solr.embedded.JettyConfig;
import org.apache.solr.embedded.JettySolrRunner;

/**
 * Starts Apache Solr (standalone, embedded Jetty) on 127.0.0.1 at the given port, with the
 * project's solr.xml and configsets in the given Solr home. Usage: SolrLauncher SOLR_HOME PORT
 */
public final class SolrLauncher {
  public static void main(String[] args) throws Exception {
    if (args.length != 2) {
      System.err.println("usage: SolrLauncher SOLR_HOME PORT");
      System.exit(2);
    }
    Path home = Path.of(args[0]).toAbsolutePath();
    int port = Integer.parseInt(args[1]);
    JettyConfig config = JettyConfig.builder().setPort(port).setContext("/solr").stopAtShutdown(true).build();
    JettySolrRunner runner = new JettySolrRunner(home.toString(), new Properties(), config);
    try {
      runner.start();
    } catch (Exception e) {
      e.printStackTrace();
      System.exit(1);
    }
    if (runner.getCoreContainer() == null || runner.getCoreContainer().isShutDown()) {
      System.err.println("solr: the core container did not start; see the log above");
      System.exit(1);
    }
    System.out.println("solr ready at " + runner.getBaseUrl());
    Runtime.getRuntime().addShutdownHook(new Thread(() -> {
      try {
        runner.stop();
      } catch (Exception e) {
        e.printStackTrace();
      }
    }));
    new CountDownLatch(1).await();
  }
}
