"""The one warehouse writer for every region: see enrollment_airflow.warehouse."""

from enrollment_airflow.warehouse import DAG_ID, warehouse_dag

globals()[DAG_ID] = warehouse_dag()
